"""`dfd-ray demo`: the pipeline end to end on an embedded local Ray with generated data.

generate (synth) → validate → stream crops through Ray Data → contact sheet → fit every scene
(Ray tasks) → train self-supervised (Ray Train, 2 workers: teachers from the stacks, the Siamese
lens terms, and the render loss and splat prior through the renderer pool) → evaluate it and the
shipped model against depth from focus and the splat fits → batch inference (Ray Data) with both
models over the test slices exported as PNG photos with a camera manifest. Sized for a 2-core
laptop: the demo's own model trains for seconds and shows the pipeline; the shipped model
(docs/model_card.md) shows what the recipe reaches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dfd_ray import contact_sheet, evaluate, fit_job, focalstack, infer, storage, streaming, synth, train
from dfd_ray.config import load_config, require, save_config
from dfd_ray.focalstack import validate
from dfd_ray.ray_session import ensure_ray


@dataclass
class DemoConfig:
    out: str = "demo_out"  # folder or URI for everything the demo writes
    n_scenes: int = 4  # training stacks to generate
    n_test: int = 2  # held-out stacks to generate (evaluated and inferred)
    height: int = 64  # pixels; the preset fixes the pitch
    width: int = 64  # pixels
    preset: str = "fod500"  # camera preset (docs/design.md §2)
    crop: int = 48  # training crop, pixels at native resolution
    batch_size: int = 2  # training stacks per worker per step
    train_steps: int = 40  # steps of the demo's own short training run
    ray_cpus: int = 4  # logical CPUs of the embedded local Ray (fractional tasks on 2 cores)
    seed: int = 0  # of the generated data

    def __post_init__(self) -> None:
        require(self.ray_cpus >= 1, "ray_cpus", "must be >= 1")
        require(0 < self.crop <= min(self.height, self.width), "crop", "must fit inside height x width")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run(cfg: DemoConfig) -> dict:
    import ray

    save_config(cfg, cfg.out)
    started = ensure_ray(cfg.ray_cpus)  # one embedded Ray for every stage
    try:
        return _stages(cfg)
    finally:
        if started:
            ray.shutdown()


def _stages(cfg: DemoConfig) -> dict:
    data = storage.join(cfg.out, "data")
    t = _step(f"generate {cfg.n_scenes}+{cfg.n_test} synthetic {cfg.preset} focal stacks → {data}")
    gen = synth.run(load_config(synth.SynthConfig, [
        f"out={data}", f"preset={cfg.preset}", f"n_scenes={cfg.n_scenes}", f"n_test={cfg.n_test}",
        f"height={cfg.height}", f"width={cfg.width}", f"seed={cfg.seed}",
    ]))
    print(f"   {gen['stacks']} in {time.perf_counter() - t:.1f} s")

    _step("validate")
    rows, problems = validate(data)
    print(f"   {rows} stacks checked, {len(problems)} problem(s)")
    if problems:
        raise RuntimeError("generated data failed validation:\n" + "\n".join(map(str, problems)))

    t = _step(f"stream {cfg.crop}x{cfg.crop} crops through Ray Data on a local Ray ({cfg.ray_cpus} CPUs)")
    ds = streaming.ray_dataset(storage.join(data, "train"), crop=cfg.crop, seed=cfg.seed)
    n_batches = n_stacks = 0
    for batch in ds.iter_torch_batches(batch_size=cfg.batch_size):
        n_batches += 1
        n_stacks += batch["images"].shape[0]
        shape = tuple(batch["images"].shape)
    print(f"   {n_stacks} stacks in {n_batches} batches, images {shape} (B, S, C, h, w), "
          f"{time.perf_counter() - t:.1f} s")

    sheet = storage.join(cfg.out, "contact_sheet.png")
    _step(f"contact sheet → {sheet}")
    contact_sheet.run(load_config(contact_sheet.ShowConfig, [f"uri={storage.join(data, 'test')}", f"out={sheet}"]))
    print(f"   wrote {sheet}")

    fitted = storage.join(cfg.out, "fit")
    t = _step(f"fit Gaussian splats to every scene on Ray tasks → {fitted}")
    fit = fit_job.run(load_config(fit_job.FitJobConfig, [f"data={data}", f"out={fitted}", f"ray_cpus={cfg.ray_cpus}"]))
    print(f"   {fit} ({time.perf_counter() - t:.0f} s)")

    run_dir = storage.join(cfg.out, "train")
    t = _step(f"train SDNet + DepthNet self-supervised, 2 workers, teachers + renderer pool → {run_dir}")
    trained = train.run(load_config(train.TrainConfig, [
        f"data={data}", f"out={run_dir}", f"splats={storage.join(fitted, 'splats')}", f"steps={cfg.train_steps}",
        f"crop={cfg.crop}", f"batch_size={cfg.batch_size}", "num_workers=2", "worker_cpus=0.5", "report_every=10",
        # A pass over 4 stacks is one step per worker, and each pass restarts Ray Data (seconds):
        # 20 crops per stack per pass make it 20 steps.
        "crops_per_pass=20",
        "checkpoint_every=20", "loss.render=10", "loss.prior=5", f"ray_cpus={cfg.ray_cpus}",
    ]))
    print(f"   final metrics: { {k: round(v, 4) for k, v in trained['final_metrics'].items()} } "
          f"({time.perf_counter() - t:.0f} s)")

    photos_dir = storage.join(cfg.out, "photos")
    manifest = _export_photos(storage.join(data, "test"), photos_dir)
    results = {}
    # The shipped model is what `eval` and `infer` take when no model is given.
    for name, model in (("demo", [f"model={trained['model']}"]), ("shipped", [])):
        metrics_dir = storage.join(cfg.out, f"eval_{name}")
        _step(f"evaluate the {name} model on the held-out stacks → {metrics_dir}")
        evaluate.run(load_config(evaluate.EvalConfig, [
            *model, f"data={data}", f"out={metrics_dir}", f"splats={storage.join(fitted, 'splats')}"]))
        depth_dir = storage.join(cfg.out, f"depth_{name}")
        t = _step(f"batch inference with the {name} model: test slices as PNG photos + camera manifest → {depth_dir}")
        inferred = infer.run(load_config(infer.InferConfig, [
            *model, f"input={photos_dir}", f"manifest={manifest}", f"out={depth_dir}", f"ray_cpus={cfg.ray_cpus}"]))
        print(f"   ({time.perf_counter() - t:.0f} s)")
        results[name] = {"metrics": storage.join(metrics_dir, "metrics.json"),
                         "inference": {k: inferred[k] for k in ("done", "errors", "scenes_fused", "images_per_s")}
                         | {"out": depth_dir}}
    pngs = [sheet, storage.join(run_dir, "training_curve.png"), storage.join(run_dir, "sample_prediction.png"),
            storage.join(fitted, "depth"), storage.join(cfg.out, "depth_demo", "_scenes"),
            storage.join(cfg.out, "depth_shipped", "_scenes")]
    print("PNGs written:\n  " + "\n  ".join(pngs))
    return {"data": data, "contact_sheet": sheet, "stacks_streamed": n_stacks, "fit": fit,
            "model": trained["model"], **results}


def _export_photos(test_prefix: str, folder: str) -> str:
    """Each test slice as <folder>/<scene_id>/slice<k>.png; returns the camera manifest (CSV) URI."""
    lines = ["path,focus_distance,focal_length,f_number,pixel_size,scene_id"]
    for stack in focalstack.read_stacks(test_prefix):
        for k, (image, focus) in enumerate(zip(stack.images, stack.focus_distances)):
            key = f"{stack.scene_id}/slice{k}.png"
            storage.write_bytes(storage.join(folder, key), focalstack.encode_png(image))
            lines.append(f"{key},{focus:.6g},{stack.focal_length:.6g},{stack.f_number:.6g},{stack.pixel_size:.6g},"
                         f"{stack.scene_id}")
    manifest = folder.rstrip("/") + "_cameras.csv"
    storage.write_bytes(manifest, ("\n".join(lines) + "\n").encode())
    return manifest
