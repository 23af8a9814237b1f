"""How the project's numba kernels (the splat compositor, the lens posterior) run on threads.

The workqueue threading layer, not OpenMP: numba's OpenMP layer shares torch's libgomp, so it
resets torch's thread count (a 1-CPU actor ran on 2 threads) and its idle threads spin, so two
processes rendering at once on 2 cores ran 11x slower each (docs/benchmarks.md, "The renderer
pool's contention"). Workqueue aborts the process when two threads launch parallel kernels at
once (a fit runs in a thread beside its progress generator): one launch at a time.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numba
import torch

numba.config.THREADING_LAYER = "workqueue"
_LAUNCH = threading.Lock()


def launch(kernel: Callable, *args: Any) -> Any:
    """Run a parallel kernel on as many threads as torch uses here (set per launching thread)."""
    with _LAUNCH:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        return kernel(*args)
