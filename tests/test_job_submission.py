"""`ray job submit` end to end on the laptop dev cluster of cluster/up.sh: a real Ray head with its
dashboard / job server and a real local S3 endpoint (moto), both on free ports and a private state
directory, so that other Ray instances on the machine are never touched. The jobs are the
repository's own entry points, uploaded with cluster/runtime_env.yaml.

Deselect with `-m "not cluster"`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
BUCKET = "dfd-ci"

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DevCluster:
    env: dict  # environment for scripts and clients: DFD_* settings plus up.sh's exports
    state: Path
    dashboard: str
    s3: str

    def script(self, name: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "cluster" / name)], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def pid(self, name: str) -> int | None:
        path = self.state / f"{name}.pid"
        return int(path.read_text()) if path.exists() else None

    def submit(self, *entrypoint: str, timeout: float = 300) -> str:
        """Submit a job with the repository's runtime env, wait for it, return its logs; the job
        must end SUCCEEDED."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        job_id = f"dfd-test-{uuid.uuid4().hex[:8]}"
        cmd = [str(RAY), "job", "submit", "--address", self.dashboard, "--submission-id", job_id,
               "--runtime-env", "cluster/runtime_env.yaml", "--", *entrypoint]
        run = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        output = run.stdout + run.stderr
        status = JobSubmissionClient(self.dashboard).get_job_status(job_id)
        assert status == JobStatus.SUCCEEDED, f"{shlex.join(entrypoint)}: {status}\n{output[-4000:]}"
        assert run.returncode == 0, output[-4000:]
        return output


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@pytest.fixture(scope="module")
def dev_cluster():
    if not RAY.exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    # Short path: Ray's unix sockets live below it.
    state = Path(tempfile.mkdtemp(prefix="dfdc", dir="/tmp"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "AWS_ENDPOINT_URL")}
    env.update(
        DFD_VENV=str(BIN.parent),
        DFD_CLUSTER_STATE=str(state),
        DFD_RAY_PORT=str(_free_port()),
        DFD_DASHBOARD_PORT=str(_free_port()),
        DFD_S3_PORT=str(_free_port()),
        DFD_S3_BUCKET=BUCKET,
        DFD_RAY_CPUS="2",
        DFD_OBJECT_STORE_MB="200",
    )
    cluster = DevCluster(env=env, state=state, dashboard="", s3="")
    pids = []
    try:
        up = cluster.script("up.sh")
        pids = [cluster.pid("ray"), cluster.pid("s3")]
        assert up.returncode == 0, up.stdout + up.stderr
        exports = {}
        for line in up.stdout.splitlines():
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                exports[key] = value
        assert exports["RAY_AUTH_MODE"] == "disabled"
        assert "RAY_ADDRESS" not in exports and "unset RAY_ADDRESS" in up.stdout
        env.update(exports)
        cluster.dashboard = exports["RAY_API_SERVER_ADDRESS"]
        cluster.s3 = exports["AWS_ENDPOINT_URL"]
        yield cluster
    finally:
        down = cluster.script("down.sh", timeout=120)
        # Backstop if down.sh failed: the groups up.sh started (setsid), and only those.
        for pid in pids:
            if pid is not None and _group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr


def test_up_is_idempotent_and_status_sees_the_cluster(dev_cluster):
    pids = dev_cluster.pid("ray"), dev_cluster.pid("s3")
    again = dev_cluster.script("up.sh")
    assert again.returncode == 0, again.stderr
    assert "ray: already running" in again.stderr and "s3: already running" in again.stderr
    assert (dev_cluster.pid("ray"), dev_cluster.pid("s3")) == pids
    status = dev_cluster.script("status.sh", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "CPU" in status.stdout and f"s3://{BUCKET}" in status.stdout


def test_job_runs_uploaded_code_on_the_venv_python(dev_cluster):
    probe = ("import os, sys, dfd_ray; "
             "print('EXE', sys.executable); print('PKG', dfd_ray.__file__); "
             "print('VENV', os.path.exists('.venv')); print('S3', os.environ.get('AWS_ENDPOINT_URL'))")
    out = dev_cluster.submit("python", "-c", probe)
    values = dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ")[0] in ("EXE", "PKG", "VENV", "S3"))
    assert Path(values["EXE"]).parent == BIN, values  # the head's PATH put the venv first
    assert "runtime_resources" in values["PKG"] and not values["PKG"].startswith(str(ROOT)), values
    assert values["VENV"] == "False", "the working-dir upload must exclude .venv"
    assert values["S3"] == dev_cluster.s3, "jobs must see the dev cluster's S3 endpoint"


@pytest.mark.slow  # a submitted job runs the project's code: the test above; fit itself: test_splat_fit
def test_make_dataset_then_fit_as_jobs(dev_cluster, tmp_path):
    import boto3

    data = f"s3://{BUCKET}/ci/data"
    dev_cluster.submit("python", "jobs/make_dataset.py", "--out", data,
                       "n_scenes=2", "n_test=1", "height=16", "width=16")
    s3 = boto3.client("s3", endpoint_url=dev_cluster.s3, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="ci/data/")["Contents"]}
    assert {"ci/data/train/part-00000.parquet", "ci/data/test/part-00000.parquet"} <= keys

    out = tmp_path / "fit"  # the job runs on this machine: a local output path is visible here
    dev_cluster.submit("python", "jobs/fit_scenes.py", "--data", data, "--out", str(out),
                       "fit.steps=3", "fit.warmup_steps=1")
    metrics = json.loads((out / "fit_metrics.json").read_text())
    assert metrics["scenes"] == 3 and metrics["failed"] == [], metrics
    assert len(list((out / "splats").glob("*.npz"))) == 3


def test_down_stops_everything(dev_cluster):
    ray_pid, s3_pid = dev_cluster.pid("ray"), dev_cluster.pid("s3")
    assert _alive(ray_pid) and _alive(s3_pid)
    down = dev_cluster.script("down.sh", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not _alive(ray_pid) and not _alive(s3_pid)
    assert not _group_alive(ray_pid), "a Ray process of the head outlived down.sh"
    assert dev_cluster.script("status.sh", timeout=60).returncode == 1
    again = dev_cluster.script("down.sh", timeout=60)
    assert again.returncode == 0 and "ray: not running" in again.stderr
