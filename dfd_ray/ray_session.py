"""Connect to the Ray cluster a job runs on, or start an embedded local one."""

from __future__ import annotations

import os


def ensure_ray(local_cpus: int, object_store_mb: int = 300) -> bool:
    """Initialise Ray if needed; returns True when this call started it (the caller shuts it down).

    Under `ray job submit` (RAY_ADDRESS set) this joins the cluster; elsewhere it starts a local
    Ray with `local_cpus` logical CPUs and a small object store, fit for a laptop.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local dev clusters (DESIGN §5)
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(num_cpus=local_cpus, object_store_memory=object_store_mb * 1024 * 1024,
                 include_dashboard=False, log_to_driver=False)
    return True
