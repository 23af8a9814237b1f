"""Connect to the Ray cluster a job runs on, or start an embedded local one."""

from __future__ import annotations

import os
import socket

from dfd_ray import interrupts


def ensure_ray(local_cpus: int, object_store_mb: int = 300) -> bool:
    """Initialise Ray if needed; returns True when this call started it (the caller shuts it down).

    Under `ray job submit` (RAY_ADDRESS set) this joins the cluster; elsewhere it starts a local
    Ray with `local_cpus` logical CPUs and a small object store, fit for a laptop.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local dev clusters (docs/design.md §5)
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        start_local_ray(local_cpus, object_store_mb, include_dashboard=False, log_to_driver=False)
    interrupts.reinstall()
    return True


def start_local_ray(num_cpus: int, object_store_mb: int, **init_kwargs) -> int:
    """Start an embedded local Ray on a dashboard port of its own; returns that port.

    Ray 2.60 records 127.0.0.1:8265 as a local Ray's dashboard (State API) address even with the
    dashboard off, and Ray Train's placement-group cleaner asks the State API there whether the
    run's controller still lives. With another local Ray's dashboard on 8265 (a test session,
    `ray start`), it asked that one, found no such controller and removed the run's placement
    group: the training workers died and FailureConfig restarted them from the last checkpoint
    (docs/benchmarks.md). On a port of its own, nobody else answers for this Ray.
    """
    import ray

    with socket.socket() as s:  # a free port, taken by Ray's dashboard a moment later (if it runs)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=num_cpus, object_store_memory=object_store_mb * 1024 * 1024, dashboard_port=port,
             **init_kwargs)
    return port
