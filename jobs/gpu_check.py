"""The GPU check: everything dfd-ray has to prove on a CUDA machine, in one go, with one report.

    make gpu-check                      # or: python jobs/gpu_check.py [--out gpu_check] [--budget-s 480]

On a machine without CUDA it says so and exits 0. With CUDA it runs, each step under its own
time limit and the whole inside `--budget-s` (8 minutes: a 15-minute rented slot leaves time to
run it again):

1. gsplat's kernels compiled (TORCH_CUDA_ARCH_LIST from the device, MAX_JOBS = the CPU count)
   and timed, by rendering one scene through the gsplat backend;
2. the gsplat parity tests (`tests/test_splat_gsplat_parity.py`: gsplat against the torch
   compositor, the CPU path's rules, on the same scenes);
3. the renderer benchmark (`jobs/bench_render.py --quick --no-fit`: torch and gsplat backends,
   forward + backward, 16k Gaussians at 128² and 100k at 256²);
4. inference throughput of the shipped model on the GPU (256² photos, batches of 16, images/s);
5. training-step throughput of the recipe on the GPU (`training_step` in-process, the recipe's
   batch of 4 stacks × 5 slices of 48² crops, teachers from the stacks, steps/s).

It writes `OUT/gpu_check.md` and `OUT/gpu_check.json` (each step's status, seconds, figures and
the tail of its output); a step that fails is recorded and the others still run. Exit status 1
when any step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "dfd_ray" / "models" / "shipped" / "fod500"


def _subprocess_step(cmd: list[str], timeout_s: float, env: dict[str, str]) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        status, output = ("passed" if done.returncode == 0 else f"failed (exit {done.returncode})"), done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status, output = f"timed out after {timeout_s:.0f} s", (exc.stdout or b"").decode(errors="replace")
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "output_tail": output[-4000:]}


def compile_gsplat() -> dict:
    """Render one small scene (the renderer benchmark's) through gsplat: its first CUDA call
    compiles the kernels."""
    import torch

    from bench_render import scene  # jobs/ is this script's folder
    from dfd_ray.splat import render

    out = render(scene(1024, 64, "cuda"), focus_distance=torch.tensor([0.3], device="cuda"), backend="gsplat")
    torch.cuda.synchronize()
    return {"image_shape": list(out.image.shape), "finite": bool(torch.isfinite(out.image).all())}


def inference_throughput(device: str, size: int = 256, batch: int = 16, repeats: int = 5) -> dict:
    """images/s of the shipped model's forward pass (depth, CoC and the side) on `device`."""
    import torch

    from dfd_ray import optics
    from dfd_ray.models.store import load_model

    model, _ = load_model(str(SHIPPED), device)
    images = torch.rand(batch, 3, size, size, device=device)
    focus = torch.full((batch,), 0.3, device=device)
    lens = optics.get_preset("fod500").lens
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = model(images, focus, lens)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    best = min(times[1:])  # the first pass includes cuDNN's algorithm search
    return {"size_px": size, "batch": batch, "images_per_s": round(batch / best, 1),
            "finite": bool(torch.isfinite(out["depth"]).all())}


def training_throughput(device: str, steps: int = 10) -> dict:
    """Steps/s of the recipe's training step (defaults of `dfd-ray train`, no renderer) on `device`."""
    import numpy as np
    import torch

    from dfd_ray import streaming, synth, teachers
    from dfd_ray.models import DFDModel
    from dfd_ray.train import TrainConfig
    from dfd_ray.train_step import training_step

    recipe = TrainConfig(data="unused", out="unused")
    cfg = synth.SynthConfig(out="unused", height=64, width=64)  # scenes made in memory, nothing written
    stacks = [synth.make_scene(cfg, i, "train") for i in range(recipe.batch_size)]
    samples = [streaming.make_sample(st, recipe.crop, np.random.default_rng(i), teacher=teachers.teacher_maps(st)[:2])
               for i, st in enumerate(stacks)]
    batch = {k: torch.from_numpy(v).to(device) for k, v in streaming.stack_samples(samples).items()}
    torch.manual_seed(0)
    model = DFDModel(recipe.model).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        loss, _, _ = training_step(model, batch, recipe.loss, supervision=recipe.supervision, depth_loss=recipe.depth_loss)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    per_step = sorted(times[2:])[len(times[2:]) // 2]  # median after two warm-up steps
    return {"batch_stacks": recipe.batch_size, "crop_px": recipe.crop, "seconds_per_step": round(per_step, 4),
            "recipe_steps": recipe.steps, "recipe_minutes": round(per_step * recipe.steps / 60, 1),
            "finite_loss": bool(torch.isfinite(loss))}


def _in_process_step(fn, *args) -> dict:
    start = time.perf_counter()
    try:
        figures, status = fn(*args), "passed"
    except Exception as exc:  # recorded, and the next step still runs
        figures, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), **figures}


def report_markdown(report: dict) -> str:
    lines = ["# GPU check", "", f"- device: {report['device']}", f"- torch {report['torch']}, CUDA {report['cuda']}",
             f"- total: {report['seconds']} s (budget {report['budget_s']} s)", "",
             "| step | status | seconds | figures |", "|---|---|---|---|"]
    for name, step in report["steps"].items():
        figures = {k: v for k, v in step.items() if k not in ("status", "seconds", "output_tail")}
        lines.append(f"| {name} | {step['status']} | {step['seconds']} | {json.dumps(figures) if figures else ''} |")
    for name, step in report["steps"].items():
        if step.get("output_tail"):
            lines += ["", f"## {name}: output (tail)", "", "```", step["output_tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check", help="report folder")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole check's time limit (seconds)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "nothing to check")
        return 0

    start = time.perf_counter()
    major, minor = torch.cuda.get_device_capability()
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}"),
               MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 4)), PYTHONUNBUFFERED="1")
    os.environ.update({k: env[k] for k in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS")})  # gsplat compiles in this process
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "budget_s": args.budget_s, "steps": {}}

    def left(cap: float) -> float:
        return max(10.0, min(cap, args.budget_s - (time.perf_counter() - start)))

    steps = report["steps"]
    steps["compile gsplat"] = _in_process_step(compile_gsplat)
    steps["gsplat parity tests"] = _subprocess_step(
        [sys.executable, "-m", "pytest", "-q", "tests/test_splat_gsplat_parity.py"], left(120), env)
    steps["renderer benchmark"] = _subprocess_step(
        [sys.executable, "jobs/bench_render.py", "--quick", "--no-fit"], left(150), env)
    steps["inference (shipped model, 256²)"] = _in_process_step(inference_throughput, "cuda")
    steps["training step (the recipe)"] = _in_process_step(training_throughput, "cuda")
    report["seconds"] = round(time.perf_counter() - start, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(report_markdown(report))
    print(report_markdown(report))
    return 0 if all(s["status"] == "passed" for s in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
