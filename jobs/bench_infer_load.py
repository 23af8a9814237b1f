"""Benchmark: `dfd-ray infer` over thousands of small photos on one embedded local Ray — the
driver's peak memory and the accounting, at a small and a large photo count.

    python jobs/bench_infer_load.py [--photos 300 3000] [--size 32] [--model URI]

Each count runs in a fresh driver process (embedded Ray of its own, 2 logical CPUs); a thread in
the driver samples its resident set every 50 ms. Printed per count: the driver's RSS after Ray
started and the model id was read (baseline), its peak during the run, the growth per photo,
photos done / errors / skipped, and that the manifest holds every photo exactly once. The re-run
of the same command must skip every photo. Without --model the shipped model is used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

CAMERA = {"focus_distance": 0.5, "focal_length": 2.9e-3, "f_number": 1.0, "pixel_size": 1.2e-5}


def make_photos(folder: str, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = f"{folder}/d{i % 50:02d}"
        os.makedirs(sub, exist_ok=True)
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(f"{sub}/p{i:05d}.png")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(photos: str, out: str, model: str) -> dict:
    import ray

    from dfd_ray import infer
    from dfd_ray.config import load_config

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20)
    cfg = load_config(infer.InferConfig, [
        f"input={photos}", f"out={out}", f"model={model}", "actor_cpus=1", "task_cpus=0.25", "io_batch=64",
        "batch_size=16", *[f"camera.{k}={v}" for k, v in CAMERA.items()],
    ])
    baseline = _rss_mb()
    peak, stop = [baseline], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    summary = infer.run(cfg)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    manifest = infer.read_table(out, infer.MANIFEST_DIR, infer.MANIFEST_SCHEMA).column("input").to_pylist()
    again = infer.run(load_config(infer.InferConfig, [f"input={photos}", f"out={out}", f"model={model}",
                                                      "actor_cpus=1", "task_cpus=0.25"]))
    ray.shutdown()
    return {"baseline_mb": baseline, "peak_mb": max(peak[0], _rss_mb()), "wall_s": wall,
            "done": summary["done"], "errors": summary["errors"], "skipped": summary["skipped"],
            "manifest_rows": len(manifest), "manifest_unique": len(set(manifest)),
            "rerun_done": again["done"], "rerun_skipped": again["skipped"], "images_per_s": summary["images_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, nargs="+", default=[300, 3000])
    parser.add_argument("--size", type=int, default=32, help="pixels (square photos)")
    parser.add_argument("--model", default="", help="model URI (default: the shipped model)")
    parser.add_argument("--child", nargs=3, metavar=("PHOTOS", "OUT", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    from dfd_ray.models.store import model_uri

    model = model_uri(args.model)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    print(f"{'photos':>6} {'base MB':>8} {'peak MB':>8} {'kB/photo':>9} {'done':>5} {'err':>4} {'manifest':>8} "
          f"{'unique':>6} {'rerun skip':>10} {'img/s':>6} {'wall s':>7}")
    for n in args.photos:
        with tempfile.TemporaryDirectory() as folder:
            make_photos(f"{folder}/photos", n, args.size)
            proc = subprocess.run([sys.executable, __file__, "--child", f"{folder}/photos", f"{folder}/out", model],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{n} photos: {proc.stderr[-1500:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        growth_kb = (r["peak_mb"] - r["baseline_mb"]) * 1024 / n
        print(f"{n:6d} {r['baseline_mb']:8.0f} {r['peak_mb']:8.0f} {growth_kb:9.1f} {r['done']:5d} {r['errors']:4d} "
              f"{r['manifest_rows']:8d} {r['manifest_unique']:6d} {r['rerun_skipped']:10d} {r['images_per_s']:6.1f} "
              f"{r['wall_s']:7.1f}", flush=True)


if __name__ == "__main__":
    main()
