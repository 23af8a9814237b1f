"""The fusion-correlation benchmark: its scores are lens fusion's at each rho, by hand."""

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


def test_each_rho_scores_the_fusion_the_model_would_make_with_it(job, tmp_path):
    synth.run(load_config(synth.SynthConfig, [f"out={tmp_path}", "n_scenes=0", "n_test=2", "height=32",
                                              "width=32", "seed=6"]))
    stacks = list(focalstack.read_stacks(focalstack.split_prefix(str(tmp_path), "test")))
    torch.manual_seed(0)
    scores = job.fusion_scores(DFDModel(ModelConfig(widths=(4, 8), side_widths=(4,), depth_bins=16)).eval(), stacks, [0.0, 1.0])
    for rho in (0.0, 1.0):
        torch.manual_seed(0)
        model = DFDModel(ModelConfig(widths=(4, 8), side_widths=(4,), depth_bins=16, fusion_correlation=rho)).eval()
        fused = [predict_slices(model, s)["fused"] for s in stacks]  # the evaluation's own fused mode
        assert scores[rho]["abs_rel"] == pytest.approx(np.mean([depth_metrics(f, s.depth)["abs_rel"] for f, s in zip(fused, stacks)]))
        expected = np.mean([job.teacher_disagreement(f, *teachers.teacher_maps(s)[:2]) for f, s in zip(fused, stacks)])
        assert scores[rho]["teacher"] == pytest.approx(expected)
    assert scores[0.0]["abs_rel"] != scores[1.0]["abs_rel"]
