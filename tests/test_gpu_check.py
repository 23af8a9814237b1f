import subprocess
import sys

import pytest
import torch

from tests.job_scripts import JOBS, load_job

SCRIPT = JOBS / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the check runs for real")
def test_without_cuda_the_gpu_check_says_so_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no CUDA device here" in done.stdout
    assert not (tmp_path / "report").exists()


def test_the_report_names_each_step_its_status_and_figures():
    gpu_check = load_job("gpu_check")
    text = gpu_check.report_markdown({
        "device": "a GPU", "torch": "2.x", "cuda": "12.x", "seconds": 3.0, "budget_s": 480,
        "steps": {"compile gsplat": {"status": "passed", "seconds": 1.0, "finite": True},
                  "parity": {"status": "failed (exit 1)", "seconds": 2.0, "output_tail": "1 failed"}}})
    assert '| compile gsplat | passed | 1.0 | {"finite": true} |' in text
    assert "| parity | failed (exit 1) | 2.0 |  |" in text and "1 failed" in text
