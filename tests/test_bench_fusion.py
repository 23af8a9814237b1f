"""The decode-calibration benchmark: its scores are the evaluation's at each scale and rho, by hand."""

import numpy as np
import pytest
import torch

from dfd_ray import focalstack, synth, teachers
from dfd_ray.config import load_config
from dfd_ray.evaluate import predict_slices
from dfd_ray.metrics import depth_metrics
from dfd_ray.models.nets import DFDModel, ModelConfig
from tests.job_scripts import load_job


@pytest.fixture(scope="module")
def job():
    return load_job("bench_fusion")


def test_teacher_disagreement_weighs_relative_errors_by_confidence(job):
    depth, teacher = np.array([[1.0, 2.0]]), np.array([[1.0, 1.0]])
    assert job.teacher_disagreement(depth, teacher, np.array([[1.0, 1.0]])) == pytest.approx(0.5)
    assert job.teacher_disagreement(depth, teacher, np.array([[1.0, 0.0]])) == 0.0
    assert np.isnan(job.teacher_disagreement(depth, teacher, np.zeros((1, 2))))


def test_each_scale_context_and_rho_score_the_evaluation_a_model_with_them_would_make(job, tmp_path):
    synth.run(load_config(synth.SynthConfig, [f"out={tmp_path}", "n_scenes=0", "n_test=2", "height=32",
                                              "width=32", "seed=6"]))
    stacks = list(focalstack.read_stacks(focalstack.split_prefix(str(tmp_path), "test")))
    small = dict(widths=(4, 8), side_widths=(4,), depth_bins=16)
    torch.manual_seed(0)
    scores = job.calibration_scores(DFDModel(ModelConfig(**small)).eval(), stacks, [1.0, 3.0], [0.0, 1.0], [0.0, 4.0])
    for sigma in (0.0, 4.0):
        for tau in (1.0, 3.0):
            for rho in (0.0, 1.0):
                torch.manual_seed(0)
                model = DFDModel(ModelConfig(**small, scale_calibration=tau, fusion_correlation=rho,
                                             context_sigma_px=sigma)).eval()
                with torch.no_grad():
                    out = [predict_slices(model, s) for s in stacks]  # the evaluation's own modes
                single = [depth_metrics(d, s.depth)["abs_rel"] for o, s in zip(out, stacks) for d in o["depth"]]
                assert scores[(sigma, tau)]["abs_rel"] == pytest.approx(np.mean(single))
                fused = scores[(sigma, tau)]["fused"][rho]
                assert fused["abs_rel"] == pytest.approx(np.mean([depth_metrics(o["fused"], s.depth)["abs_rel"]
                                                                  for o, s in zip(out, stacks)]))
                expected = np.mean([job.teacher_disagreement(o["fused"], *teachers.teacher_maps(s)[:2])
                                    for o, s in zip(out, stacks)])
                assert fused["teacher"] == pytest.approx(expected)
    assert scores[(0.0, 1.0)]["abs_rel"] != scores[(0.0, 3.0)]["abs_rel"]
    assert scores[(0.0, 1.0)]["abs_rel"] != scores[(4.0, 1.0)]["abs_rel"]
    assert scores[(0.0, 1.0)]["fused"][0.0]["abs_rel"] != scores[(0.0, 1.0)]["fused"][1.0]["abs_rel"]
