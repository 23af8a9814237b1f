"""Benchmark: the start of a training pass through Ray Data beside a compute-bound consumer.

    python jobs/bench_data_pass.py --data D36/train [--batches 200] [--work-s 0.4]
        [--policies pipeline ray cap ...] [--trainer]

Builds the training pipeline as `dfd-ray train` does (`streaming.ray_dataset`, teachers on,
`max_tasks` 2, an embedded Ray with 4 logical CPUs and a 2,000 MiB store), splits it for one
consumer (`streaming_split` in the driver, or with `--trainer` Ray Train's own split for a
`TorchTrainer` worker of 2 CPUs; either way a `SplitCoordinator` actor runs the executor) and
iterates the first `--batches` batches of 4, each followed by `--work-s` seconds (measured
alone at the start) of torch matmuls on 2 threads, the stand-in for a training step. Per set of
Ray Data backpressure policies it prints the consumer's seconds per batch (median, first and
second half), the coordinator's CPU seconds (from the pipeline's start to the last batch) and
the machine's busy cores over the run. The policy sets (`POLICIES`): `pipeline` (the training
pipeline's own), `ray` (Ray's default list), `cap` (only the concurrency cap), `cap+budget` and
`cap+downstream` (the cap and one output policy), `none`. Each set starts a fresh pipeline in
the same Ray, one after the other, so the first pays the data workers' start-up. Linux only
(/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

import torch
from bench_infer import process_table  # jobs/ is this script's folder

from dfd_ray import streaming
from dfd_ray.ray_session import ensure_ray


def _ray_policies():
    from ray.data._internal.execution import backpressure_policy  # private to Ray Data

    return backpressure_policy


def _policies(*names: str) -> list:
    return [getattr(_ray_policies(), name) for name in names]


# Ray Data backpressure policy sets by name; "pipeline" keeps what `streaming.ray_dataset` sets
# (Ray's less the downstream-capacity policy), "ray" is Ray's own list.
POLICIES = {
    "pipeline": None,
    "ray": lambda: list(_ray_policies().ENABLED_BACKPRESSURE_POLICIES),
    "cap": lambda: _policies("ConcurrencyCapBackpressurePolicy"),
    "cap+budget": lambda: _policies("ConcurrencyCapBackpressurePolicy", "ResourceBudgetBackpressurePolicy"),
    "cap+downstream": lambda: _policies("ConcurrencyCapBackpressurePolicy", "DownstreamCapacityBackpressurePolicy"),
    "none": lambda: [],
}


def _work(iterations: int, a: torch.Tensor) -> None:
    for _ in range(iterations):
        a = torch.tanh(a @ a)


def _calibrate(seconds: float, a: torch.Tensor) -> int:
    _work(20, a)  # torch's thread pool starts on the first calls
    start = time.perf_counter()
    _work(50, a)
    per = (time.perf_counter() - start) / 50
    return max(1, round(seconds / per))


def _coordinators() -> dict[int, float]:
    """pid → CPU seconds of the processes whose title names a SplitCoordinator."""
    return {pid: cpu for pid, (_, cpu, cmdline) in process_table().items() if "SplitCoordinator" in cmdline}


def _machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _consume(batches_iter, batches: int, iterations: int, a: torch.Tensor) -> tuple[list[float], list[float]]:
    """Seconds a batch (wait + work) and seconds waited for it, over the first `batches` batches."""
    waits, laps = [], []
    last = time.perf_counter()
    for i, _batch in enumerate(batches_iter):
        waits.append(time.perf_counter() - last)
        _work(iterations, a)
        now = time.perf_counter()
        laps.append(now - last)
        last = now
        if i + 1 == batches:
            break
    return laps, waits


class _CoordinatorPoller:
    """CPU seconds of every SplitCoordinator seen while running, sampled twice a second."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            for pid, cpu in _coordinators().items():
                self.first.setdefault(pid, 0.0)  # a coordinator found later started after the poller
                self.last[pid] = max(cpu, self.last.get(pid, 0.0))

    def __enter__(self) -> "_CoordinatorPoller":
        self.first = _coordinators()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_s(self) -> float:
        return sum(self.last[f] - self.first.get(f, 0.0) for f in self.last)


def _train_loop(config: dict) -> None:
    import ray.train

    torch.set_num_threads(2)
    it = ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=4, drop_last=True)
    laps, waits = _consume(it, config["batches"], config["iterations"], config["a"])
    # The embedded Ray is this machine, so a file carries the timings back to the driver.
    with open(config["timings"], "w") as f:
        json.dump({"laps": laps, "waits": waits}, f)


def _through_trainer(ds, batches: int, iterations: int, a: torch.Tensor) -> tuple[list[float], list[float]]:
    import ray.train
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as root:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"batches": batches, "iterations": iterations, "a": a, "timings": f"{root}/timings.json"},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
            run_config=ray.train.RunConfig(storage_path=root), datasets={"train": ds})
        trainer.fit()
        with open(f"{root}/timings.json") as f:
            timings = json.load(f)
    return timings["laps"], timings["waits"]


def run_one(data: str, policies: str, batches: int, iterations: int, a: torch.Tensor, trainer: bool) -> dict:
    ds = streaming.ray_dataset(data, crop=48, seed=0, max_tasks=2, teachers=True)
    if POLICIES[policies] is not None:
        ds.context.set_config(_ray_policies().ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, POLICIES[policies]())
    machine0 = _machine_busy_s()
    start = time.perf_counter()
    with _CoordinatorPoller() as poller:
        if trainer:
            laps, waits = _through_trainer(ds, batches, iterations, a)
        else:
            laps, waits = _consume(ds.streaming_split(1)[0].iter_torch_batches(batch_size=4, drop_last=True),
                                   batches, iterations, a)
    wall = time.perf_counter() - start
    busy = _machine_busy_s() - machine0
    half = len(laps) // 2
    return {"policies": policies, "batches": len(laps), "wall_s": wall,
            "median_s": statistics.median(laps), "first_half_s": statistics.mean(laps[:half]),
            "second_half_s": statistics.mean(laps[half:]), "wait_s": sum(waits),
            "coordinator_cpu_s": poller.cpu_s(), "machine_cores_busy": busy / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--work-s", type=float, default=0.4)
    parser.add_argument("--policies", nargs="+", default=["pipeline", "ray"],
                        choices=sorted(POLICIES))
    parser.add_argument("--trainer", action="store_true",
                        help="consume in a TorchTrainer worker of 2 CPUs, as `dfd-ray train` does")
    args = parser.parse_args()
    torch.set_num_threads(2)
    a = torch.randn(384, 384) / 20
    iterations = _calibrate(args.work_s, a)
    ensure_ray(4, 2000)
    print(f"{'policies':>14} {'batches':>7} {'wall s':>7} {'median s':>8} {'1st half':>8} {'2nd half':>8} "
          f"{'waited s':>8} {'coord CPU s':>11} {'cores busy':>10}  (consumer work {args.work_s} s a batch, "
          f"{'in a TorchTrainer worker' if args.trainer else 'in the driver'})")
    for policies in args.policies:
        r = run_one(args.data, policies, args.batches, iterations, a, args.trainer)
        print(f"{r['policies']:>14} {r['batches']:7d} {r['wall_s']:7.1f} {r['median_s']:8.3f} {r['first_half_s']:8.3f} "
              f"{r['second_half_s']:8.3f} {r['wait_s']:8.1f} {r['coordinator_cpu_s']:11.1f} "
              f"{r['machine_cores_busy']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
