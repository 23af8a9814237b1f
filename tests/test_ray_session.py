"""The embedded local Ray that jobs start (`ensure_ray`) and the test session's: each must give its
State API address as its own, or Ray Train's placement-group cleaner asks another local Ray whether
a run's controller lives and, told no, removes the run's workers (docs/benchmarks.md)."""

import subprocess
import sys

import pytest

DEFAULT_DASHBOARD_PORT = 8265  # where any other local Ray puts its dashboard by default

READ_ADDRESS = """
import ray
from ray._private import ray_constants
from dfd_ray.ray_session import ensure_ray
assert ensure_ray(1, 100)
gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
print(gcs.internal_kv_get(ray_constants.DASHBOARD_ADDRESS.encode(), namespace=ray_constants.KV_NAMESPACE_DASHBOARD).decode())
ray.shutdown()
"""


def _dashboard_port(address: str) -> int:
    host, port = address.rsplit(":", 1)
    assert host in ("127.0.0.1", "localhost"), address
    return int(port)


@pytest.mark.ray
def test_each_local_ray_gives_a_state_api_address_of_its_own(ray_session):
    import os

    import ray
    from ray._private import ray_constants

    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    session = gcs.internal_kv_get(ray_constants.DASHBOARD_ADDRESS.encode(), namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a job's own embedded Ray
    job = subprocess.run([sys.executable, "-c", READ_ADDRESS], env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    ports = {_dashboard_port(session.decode()), _dashboard_port(job.stdout.strip().splitlines()[-1])}
    assert len(ports) == 2 and DEFAULT_DASHBOARD_PORT not in ports, ports
