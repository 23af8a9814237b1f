"""Benchmark: how long `dfd-ray fit`, `train` and `infer` take to stop after Ctrl-C (SIGINT) or
SIGTERM, and what the same command then finds when it runs again. Each job runs on an embedded
local Ray of its own, as a user runs it; the signal goes once the job has finished some work
(a fitted scene, a registered checkpoint, a manifest part). Prints one row per run.

    python jobs/bench_interrupts.py [--out /tmp/dfd_bench_interrupts]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from dfd_ray import synth
from dfd_ray.config import load_config


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfd_ray.cli", *args]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def stop_after(args: list[str], ready_glob: str, sig: signal.Signals) -> tuple[int, float, str]:
    """(exit status, seconds from the signal to the exit, last stderr line) of one interrupted run."""
    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not glob.glob(ready_glob):
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} ended before the signal: {proc.stderr.read()[-500:]}")
            time.sleep(0.05)
        sent = time.perf_counter()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=600)
        return proc.returncode, time.perf_counter() - sent, (err.strip().splitlines() or [""])[-1]
    finally:
        if proc.poll() is None:
            proc.kill()


def rerun(args: list[str]) -> dict:
    proc = subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"re-run of {args[0]} failed: {proc.stderr[-800:]}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/dfd_bench_interrupts")
    root = parser.parse_args().out
    shutil.rmtree(root, ignore_errors=True)
    data = os.path.join(root, "data")
    synth.run(load_config(synth.SynthConfig, [f"out={data}", "n_scenes=6", "n_test=0", "height=48", "width=48"]))
    photos = os.path.join(root, "photos")
    os.makedirs(photos)
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray((rng.random((320, 320, 3)) * 255).astype(np.uint8)).save(os.path.join(photos, f"p{i:02d}.png"))
    camera = ["camera.focus_distance=0.5", "camera.focal_length=0.0029", "camera.f_number=1", "camera.pixel_size=1.2e-5"]

    rows = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        tag = sig.name.lower()
        fit = ["fit", "--data", data, "--out", os.path.join(root, f"fit-{tag}"), "fit.steps=60", "task_cpus=0.5"]
        rc, seconds, line = stop_after(fit, os.path.join(root, f"fit-{tag}", "records", "*.json"), sig)
        done = len(glob.glob(os.path.join(root, f"fit-{tag}", "records", "*.json")))
        again = rerun(fit)
        rows.append(("fit", sig.name, rc, seconds, f"{done} of 6 scenes fitted; re-run kept "
                     f"{again['kept_from_earlier_run']}, fitted {again['scenes'] - again['kept_from_earlier_run']}", line))

        out = os.path.join(root, f"train-{tag}")
        train = ["train", "--data", data, "--out", out, "batch_size=1", "num_workers=1", "worker_cpus=1",
                 "ray_cpus=2", "checkpoint_every=10", "report_every=10"]
        snapshot = os.path.join(out, "dfd", "checkpoint_manager_snapshot.json")
        rc, seconds, line = stop_after([*train, "steps=5000"], snapshot, sig)
        with open(snapshot) as f:
            saved = max(r["metrics"]["step"] for r in json.load(f)["checkpoint_results"])
        final = rerun([*train, f"steps={saved + 10}"])["final_metrics"]
        rows.append(("train", sig.name, rc, seconds, f"checkpoint at step {saved}; re-run resumed from "
                     f"{final['resumed_from']}", line))

        out = os.path.join(root, f"infer-{tag}")
        infer = ["infer", "--input", photos, "--out", out, "batch_size=1", "io_batch=1", "tile=48", "overlap=8",
                 *camera]
        rc, seconds, line = stop_after(infer, os.path.join(out, "_manifest", "*.parquet"), sig)
        summary = rerun(infer)
        rows.append(("infer", sig.name, rc, seconds, f"re-run: {summary['skipped']} skipped, {summary['done']} done, "
                     f"{summary['errors']} errors of 24", line))

    print(f"cpus={os.cpu_count()}")
    print("| job | signal | exit | stop [s] | re-run | message |")
    print("|---|---|---|---|---|---|")
    for job, name, rc, seconds, what, line in rows:
        print(f"| {job} | {name} | {rc} | {seconds:.2f} | {what} | {line} |")


if __name__ == "__main__":
    main()
