"""Benchmark: `dfd-ray infer`, `fit` and `train` over s3:// while the object store fails for a while
mid-run (refused connections, dropped responses, 503 SlowDown), then the same command again.
Prints one row per run: what the job did, its wall time, and items in / out / errors / duplicates
after the re-run (expected: nothing lost, nothing twice).

Needs nothing outside this machine: moto's S3 server on 127.0.0.1 behind `dfd_ray.fault_proxy`.

    python jobs/bench_store_faults.py [--photos 24] [--outages refuse:12 refuse:30 slowdown:30 drop:30]
                                      [--jobs infer fit train]

infer's and fit's outage starts `--start-s` seconds into the run; train's when its first
checkpoint is in the store (so that the outage meets the checkpoint uploads that follow).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
from PIL import Image

TRAIN_STEPS = 60
CAMERA = ["camera.focus_distance=0.5", "camera.focal_length=0.0029", "camera.f_number=1", "camera.pixel_size=1.2e-5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--start-s", type=float, default=8.0, help="seconds into each run the outage starts")
    parser.add_argument("--outages", nargs="+", default=["refuse:12", "refuse:30", "slowdown:30", "drop:30"])
    parser.add_argument("--jobs", nargs="+", default=["infer", "fit", "train"], choices=["infer", "fit", "train"])
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    upstream = f"http://{host}:{port}"

    from dfd_ray import storage, synth
    from dfd_ray.config import load_config
    from dfd_ray.fault_proxy import FaultyProxy

    proxy = FaultyProxy(upstream)
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    rows = []
    for outage in args.outages:
        mode, seconds = outage.split(":")
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        s3 = boto3.client("s3", endpoint_url=upstream)  # beside the proxy: the bench's own view
        s3.create_bucket(Bucket=bucket)
        root = f"s3://{bucket}"
        rng = np.random.default_rng(0)
        for i in range(args.photos):
            buf = io.BytesIO()
            Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
            storage.write_bytes(f"{root}/in/p{i:03d}.png", buf.getvalue())
        synth.run(load_config(synth.SynthConfig, [f"out={root}/data", f"n_scenes={args.scenes}", "n_test=0",
                                                  "height=32", "width=32"]))
        jobs = {
            "infer": ["infer", "--input", f"{root}/in", "--out", f"{root}/out", "batch_size=2", "io_batch=2", *CAMERA],
            "fit": ["fit", "--data", f"{root}/data", "--out", f"{root}/fit", "fit.steps=40", "task_cpus=0.5"],
            "train": ["train", "--data", f"{root}/data", "--out", f"{root}/train", f"steps={TRAIN_STEPS}",
                      "checkpoint_every=10", "report_every=10", "batch_size=2", "crop=24", "worker_cpus=1",
                      "ray_cpus=2", "lr_decay_at=[]"],
        }
        for job in args.jobs:
            cli = jobs[job]
            before = dict(proxy.counts)
            if job == "train":
                def first_checkpoint(bucket=bucket, mode=mode, seconds=seconds):
                    deadline = time.monotonic() + 600
                    def keys():
                        return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="train/").get("Contents", [])]
                    while time.monotonic() < deadline and not any("/checkpoint_" in k for k in keys()):
                        time.sleep(0.2)
                    proxy.fault(mode, float(seconds))
                timer = threading.Thread(target=first_checkpoint, daemon=True)
            else:
                timer = threading.Timer(args.start_s, proxy.fault, args=(mode, float(seconds)))
            started = time.perf_counter()
            timer.start()
            first = subprocess.run([sys.executable, "-m", "dfd_ray.cli", *cli], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - started
            if isinstance(timer, threading.Timer):
                timer.cancel()
            time.sleep(max(0.0, float(seconds) + args.start_s - wall))  # the store is back before the re-run
            again = subprocess.run([sys.executable, "-m", "dfd_ray.cli", *cli], capture_output=True, text=True, env=env)
            met = {m: proxy.counts[m] - before[m] for m in proxy.counts if m != "up"}
            rows.append((outage, job, first, wall, again, met, root))

    print(f"cpus={os.cpu_count()} photos={args.photos} scenes={args.scenes} outage starts {args.start_s:g} s in")
    print("| outage | job | first run | wall [s] | faulted connections | after the re-run |")
    print("|---|---|---|---|---|---|")
    from dfd_ray import infer as infer_mod

    for outage, job, first, wall, again, met, root in rows:
        said = "finished" if first.returncode == 0 else f"exit {first.returncode}: " + \
            (first.stderr.strip().splitlines() or [""])[-1][:160]
        if job == "infer":
            manifest = infer_mod.read_table(f"{root}/out", infer_mod.MANIFEST_DIR, infer_mod.MANIFEST_SCHEMA).to_pylist()
            errors = infer_mod.read_table(f"{root}/out", infer_mod.ERRORS_DIR, infer_mod.ERRORS_SCHEMA).to_pylist()
            inputs = [r["input"] for r in manifest]
            after = (f"in {args.photos}, out {len(set(inputs))}, errors {len(errors)}, "
                     f"duplicates {len(inputs) - len(set(inputs))}")
        elif job == "train":
            from dfd_ray.models.store import load_model

            try:
                load_model(f"{root}/train/model")
                state = json.loads(storage.read_bytes(f"{root}/train/state.json"))
                after = (f"model loads, trained to step {state.get('step', '?')} of {TRAIN_STEPS} "
                         f"(re-run exit {again.returncode})")
            except Exception as exc:
                after = f"no model: {type(exc).__name__}: {str(exc)[:120]} (re-run exit {again.returncode})"
        else:
            summary = json.loads(again.stdout[again.stdout.index("{"):]) if again.returncode == 0 else {}
            records = storage.list_files(f"{root}/fit/records", "*.json")
            after = (f"in {args.scenes}, out {len(records)}, failed {summary.get('failed', '?')}, kept "
                     f"{summary.get('kept_from_earlier_run', '?')} (re-run exit {again.returncode})")
        print(f"| {outage.replace(':', ' ')} s | {job} | {said} | {wall:.1f} | "
              f"{', '.join(f'{k} {v}' for k, v in met.items() if v)} | {after} |")
    proxy.close()
    server.stop()


if __name__ == "__main__":
    main()
