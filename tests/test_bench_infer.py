"""The inference benchmark's CPU profile: roles from command lines, CPU seconds from /proc."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.job_scripts import load_job


@pytest.fixture(scope="module")
def job():
    return load_job("bench_infer")


@pytest.mark.parametrize("cmdline, role", [
    ("/venv/lib/python3.12/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x", "raylet"),
    ("/venv/bin/python -u /venv/lib/python3.12/site-packages/ray/_private/log_monitor.py --logs-dir=/t", "log_monitor.py"),
    ("/venv/lib/python3.12/site-packages/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp/raylet", "gcs_server"),
    ("ray::DashboardAgent", "ray::DashboardAgent"),
    ("ray::MapWorker(MapBatches(PhotoPipeline)).submit", "ray::MapWorker(MapBatches(PhotoPipeline))"),
    ("ray::IDLE", "ray::IDLE"),
    ("/usr/bin/python3 -c pass", "python3"),
])
def test_a_process_is_named_by_its_role(job, cmdline, role):
    assert job.process_role(cmdline) == role


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_the_cpu_of_a_child_process_is_counted_under_its_role(job):
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\ntime.sleep(0.6)"
    with job.ProcessCpu(interval_s=0.05) as cpu:
        subprocess.run([sys.executable, "-c", burn], check=True)
    roles = cpu.by_role()
    child = roles[Path(sys.executable).name]
    assert child[1] == 1 and 0.9 <= child[0] <= 1.6  # its 1 s of CPU, to the clock tick and the start-up
    assert "driver" in roles and list(roles) == sorted(roles, key=lambda r: -roles[r][0])
