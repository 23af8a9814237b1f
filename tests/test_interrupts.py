"""Ctrl-C (SIGINT) and SIGTERM on `dfd-ray fit` and `dfd-ray train`, each on its own embedded Ray as
a user runs it: the job stops, says how to resume, and the same command then resumes; a second
signal stops at once. (`infer` under SIGINT: tests/test_infer.py.)"""

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from dfd_ray import synth
from dfd_ray.config import load_config

pytestmark = pytest.mark.ray  # each job starts an embedded Ray of its own

STOP_TIMEOUT_S = 120  # a stop that takes longer is a hang; the measured times are seconds (docs/reliability.md)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt-data")
    synth.run(load_config(synth.SynthConfig, [f"out={root}", "n_scenes=4", "n_test=0", "height=32", "width=32", "seed=5"]))
    return str(root)


def _start(*args):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # an embedded Ray of its own
    return subprocess.Popen([sys.executable, "-m", "dfd_ray.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _signal_when(proc, ready, *signals):
    """Send `signals` once `ready()`; each after the first once the job has said it took the one
    before (signals that arrive before the handler runs count as one). → (status, stdout, stderr)."""
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True),
               threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.time() + 300
        while not ready():
            assert proc.poll() is None, f"exited before the signal: {''.join(err)}"
            assert time.time() < deadline, "never got ready for the signal"
            time.sleep(0.1)
        for i, sig in enumerate(signals):
            if i:
                while not any("stopping" in line for line in err) and proc.poll() is None:
                    time.sleep(0.01)
            proc.send_signal(sig)
        proc.wait(timeout=STOP_TIMEOUT_S)
        for reader in readers:
            reader.join(timeout=10)
        return proc.returncode, "".join(out), "".join(err)
    finally:
        if proc.poll() is None:  # a failed check must not leave a job running
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_fit_stops_on_sigint_and_the_same_command_resumes(data, tmp_path):
    out = tmp_path / "fit"
    args = ["fit", "--data", data, "--out", str(out), "fit.steps=60", "fit.warmup_steps=5", "task_cpus=0.5",
            "ray_cpus=1"]
    proc = _start(*args)
    rc, _, err = _signal_when(proc, lambda: len(glob.glob(str(out / "records" / "*.json"))) >= 1, signal.SIGINT)
    assert rc == 130 and "stopped by SIGINT" in err and "scenes already fitted are kept" in err
    assert "Traceback" not in err
    done = len(glob.glob(str(out / "records" / "*.json")))
    assert 1 <= done < 4, f"the interrupt did not land mid-run ({done} of 4 fitted)"

    again = subprocess.run([sys.executable, "-m", "dfd_ray.cli", *args], capture_output=True, text=True, timeout=600,
                           env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout[again.stdout.index("{"):])
    assert summary["scenes"] == 4 and summary["kept_from_earlier_run"] == done


@pytest.mark.slow
def test_a_second_signal_stops_at_once(data, tmp_path):
    out = tmp_path / "fit"
    proc = _start("fit", "--data", data, "--out", str(out), "fit.steps=150", "task_cpus=0.5", "ray_cpus=1")
    working = lambda: len(glob.glob(str(out / "records" / "*.json"))) >= 1  # noqa: E731
    rc, _, err = _signal_when(proc, working, signal.SIGTERM, signal.SIGTERM)
    assert "stopping (send it again to stop at once)" in err
    assert rc == 128 + signal.SIGTERM  # the second came during the clean-up of the first


@pytest.mark.slow
def test_train_stops_on_sigterm_and_resumes_from_its_checkpoint(data, tmp_path):
    out = tmp_path / "train"
    common = ["train", "--data", data, "--out", str(out), "crop=32", "batch_size=1", "num_workers=1",
              "worker_cpus=0.5", "ray_cpus=2", "report_every=2", "checkpoint_every=2", "crops_per_pass=6"]
    proc = _start(*common, "steps=2000")
    snapshot = out / "dfd" / "checkpoint_manager_snapshot.json"
    rc, _, err = _signal_when(proc, snapshot.exists, signal.SIGTERM)
    assert rc == 130 and "stopped by SIGTERM" in err and "resumes from the last checkpoint" in err
    assert "Traceback" not in err
    assert not (out / "model").exists()  # an interrupted run publishes no model

    saved = max(r["metrics"]["step"] for r in json.loads(snapshot.read_text())["checkpoint_results"])
    again = subprocess.run([sys.executable, "-m", "dfd_ray.cli", *common, f"steps={saved + 2}"], capture_output=True,
                           text=True, timeout=600, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert again.returncode == 0, again.stderr
    final = json.loads(again.stdout[again.stdout.index("{"):])["final_metrics"]
    assert final["resumed_from"] == saved and final["step"] == saved + 2
