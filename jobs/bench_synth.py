"""Benchmark: synthetic focal-stack generation throughput (issue 2 target: 100 stacks of
5×128×128 in under a minute on 2 cores). Prints one line of figures.

    python jobs/bench_synth.py [n_scenes=100] [height=128] [width=128] [out=/tmp/dfd_bench_synth]
"""

from __future__ import annotations

import os
import sys
import time

import torch

from dfd_ray import synth
from dfd_ray.config import load_config


def main(argv: list[str]) -> None:
    overrides = ["out=/tmp/dfd_bench_synth", "n_scenes=100", "n_test=0", *argv]
    cfg = load_config(synth.SynthConfig, overrides)
    start = time.perf_counter()
    result = synth.run(cfg)
    seconds = time.perf_counter() - start
    n = cfg.n_scenes + cfg.n_test
    print(
        f"synth: {n} stacks of 5x{cfg.height}x{cfg.width} ({cfg.preset}) in {seconds:.1f} s "
        f"= {n / seconds:.2f} stacks/s, {result['shards']} shard(s) at {cfg.out}; "
        f"cpus={os.cpu_count()} torch_threads={torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
