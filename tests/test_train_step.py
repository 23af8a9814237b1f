"""The training step without Ray: each loss term, the renderer's two among them through an
in-process `RendererCore`, falls when trained alone on samples cut as the Ray pipeline cuts them."""

import numpy as np
import pytest
import torch

from dfd_ray import focalstack, streaming, teachers
from dfd_ray.models import DFDModel, ModelConfig
from dfd_ray.services.renderer import RendererCore, RendererPoolConfig
from dfd_ray.splat.fit import FitConfig
from dfd_ray.train_step import LossWeights, training_step
from tests.datasets import tiny_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("step-data"), "n_test=0")


@pytest.fixture(scope="module")
def renderer(data, tmp_path_factory):
    """The body of a renderer actor in this process; it fits the two scenes on first use."""
    threads = torch.get_num_threads()  # a core sets its process's torch threads from num_cpus
    yield RendererCore(RendererPoolConfig(splat_store=str(tmp_path_factory.mktemp("splats")), data=data,
                                          num_cpus=threads, fit=FitConfig(steps=20, warmup_steps=5)))
    torch.set_num_threads(threads)


def _batch(data: str, with_teachers: bool) -> dict:
    """Both training stacks, cut as the Ray pipeline cuts them (teachers from the stacks)."""
    stacks = list(focalstack.read_stacks(f"{data}/train"))
    samples = [streaming.make_sample(st, 32, np.random.default_rng(i),
                                     teacher=teachers.stack_depth(st) if with_teachers else None)
               for i, st in enumerate(stacks)]
    return {k: torch.from_numpy(v) for k, v in streaming.stack_samples(samples).items()}


def _train_alone(batch: dict, term: str, steps: int = 12, **step_kw) -> tuple[list[float], dict]:
    """The values of `term` over `steps` steps that train on it alone, and the last step's log."""
    weights = LossWeights(**{k: float(k == term) for k in LossWeights.__dataclass_fields__})
    torch.manual_seed(0)
    model = DFDModel(ModelConfig(widths=(8, 16), side_widths=(8, 16)))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    values = []
    for _ in range(steps):
        loss, logged, _ = training_step(model, batch, weights, **step_kw)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        values.append(logged[term])
    return values, logged


@pytest.mark.parametrize("term", list(LossWeights.__dataclass_fields__))
def test_each_term_of_the_step_falls_when_trained_alone(data, renderer, term):
    served = renderer if term in ("render", "prior") else None
    values, _ = _train_alone(_batch(data, with_teachers=True), term, renderer=served)
    assert values[-1] < values[0], (term, values)
    if served is not None:
        assert renderer.stats()["requests"] > 0


def test_gt_supervision_teaches_the_coc_of_the_gt_depth_and_needs_no_teacher_maps(data):
    batch = _batch(data, with_teachers=False)
    assert "teacher_depth" not in batch
    values, logged = _train_alone(batch, "teacher_coc", supervision="gt")
    # with GT depth the teacher CoC is the GT CoC, which the monitor measures on its own
    assert values[-1] < values[0] and logged["monitor_coc_mae_px"] == pytest.approx(logged["teacher_coc"], rel=1e-4)
