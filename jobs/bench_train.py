"""Benchmark: training throughput (stacks/s) with 1 and 2 workers, and the share of step time
spent in renderer-service round trips.

    python jobs/bench_train.py [--steps 20] [--workers 1 2] [--size 64] [--crop 48] [--batch 2]

Synthetic fod500 stacks are fitted first (30 fit steps: splat quality does not matter for
throughput); each run then trains `steps` steps and the figures come from the second half of
the run (after warm-up): stacks/s = workers × batch × steps / wall seconds between the two
reports; service share = time in priors + render-loss round trips / time in training steps.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from dfd_ray import fit_job, synth, train
from dfd_ray.config import load_config
from dfd_ray.ray_session import ensure_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ensure_ray(4)
    with tempfile.TemporaryDirectory() as root:
        n = 2 * max(args.workers) * args.batch
        synth.run(load_config(synth.SynthConfig, [f"out={root}/data", f"n_scenes={n}", "n_test=0",
                                                  f"height={args.size}", f"width={args.size}"]))
        fit_job.run(load_config(fit_job.FitJobConfig, [f"data={root}/data", f"out={root}/fit", "fit.steps=30",
                                                       "fit.warmup_steps=10", "ray_cpus=4"]))
        half = args.steps // 2
        print(f"{'workers':>7} {'stacks/s':>9} {'s/step':>7} {'service share':>14}  ({args.size}² stacks, "
              f"{args.crop}² crops, batch {args.batch}/worker, steps {half + 1}-{args.steps})")
        for workers in args.workers:
            out = f"{root}/run{workers}"
            train.run(load_config(train.TrainConfig, [
                f"data={root}/data", f"out={out}", f"splats={root}/fit/splats", f"steps={args.steps}",
                f"report_every={half}", f"checkpoint_every={args.steps}", f"num_workers={workers}",
                f"batch_size={args.batch}", f"crop={args.crop}", "ray_cpus=4", "worker_cpus=0.5",
                f"crops_per_pass={args.steps}",  # one pass over the few stacks: no Ray Data restarts in the timing
                "loss.render=10", "loss.prior=5",  # the two terms that go through the renderer service
            ]))
            history = json.load(open(f"{out}/state.json"))["history"]
            first, last = history[0], history[-1]
            seconds = last["seconds"] - first["seconds"]
            steps = last["step"] - first["step"]
            stacks_per_s = workers * args.batch * steps / seconds
            share = last["time_service_s"] / last["time_step_s"]
            print(f"{workers:7d} {stacks_per_s:9.2f} {seconds / steps:7.2f} {share:13.0%}", flush=True)


if __name__ == "__main__":
    main()
