"""The training state without Ray: checkpoint round trips, the weight average, the rate schedule."""

import pytest
import torch

from dfd_ray import optics, train_state
from dfd_ray.models import DFDModel, ModelConfig, load_model


def test_training_state_round_trip_is_exact(tmp_path):
    model = DFDModel(ModelConfig())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    average = train_state.WeightAverage(model, 0.9)
    for _ in range(2):
        out = model(torch.rand(1, 3, 16, 16), torch.tensor([0.3]), optics.Lens(2.9e-3, 1.0, 12e-6))
        (out["depth"].mean() + out["coc"].mean()).backward()
        optimiser.step()
        average.update(model)
    train_state.save_training_state(str(tmp_path), model, optimiser, 7, [{"step": 7}], "self", average)
    fresh = DFDModel(ModelConfig())
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh_average = train_state.WeightAverage(fresh, 0.9)
    step, history = train_state.load_training_state(str(tmp_path), fresh, fresh_opt, fresh_average)
    assert step == 7 and history == [{"step": 7}] and fresh_average.updates == 2
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(average.model.state_dict().values(), fresh_average.model.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = optimiser.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name])
    loaded, meta = load_model(str(tmp_path))  # a checkpoint serves the average, not the online weights
    assert meta["trained_steps"] == 7 and meta["weights"] == "ema"
    assert all(torch.equal(a, b) for a, b in zip(average.model.state_dict().values(), loaded.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_checkpoint_without_average_holds_the_weights_once_and_an_average_can_start_from_it(tmp_path):
    model = DFDModel(ModelConfig())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_state.save_training_state(str(tmp_path), model, optimiser, 3, [], "gt")
    assert not (tmp_path / train_state.ONLINE_WEIGHTS).exists()  # model.pt is the optimiser's weights
    fresh = DFDModel(ModelConfig())
    average = train_state.WeightAverage(fresh, 0.9)
    assert train_state.load_training_state(str(tmp_path), fresh, torch.optim.Adam(fresh.parameters()), average)[0] == 3
    for a, b, c in zip(model.state_dict().values(), fresh.state_dict().values(), average.model.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert average.updates == 0 and load_model(str(tmp_path))[1]["weights"] == "online"


def test_weight_average_warms_up_then_decays():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = train_state.WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model)  # decay min(0.5, 2/11): 0 + (1 - 2/11) * (1 - 0)
    assert float(average.model.weight) == pytest.approx(9 / 11)
    for _ in range(20):
        average.update(model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    before = float(average.model.weight)
    average.update(model)  # past the warm-up: decay 0.5
    assert float(average.model.weight) == pytest.approx(0.5 * before + 0.5 * 3.0)
    assert not average.model.weight.requires_grad and average.updates == 22


def test_weight_average_serves_the_latest_batch_norm_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    average = train_state.WeightAverage(model, decay=0.99)
    model.train()(torch.randn(4, 1, 3, 3) + 5.0)  # moves the running statistics
    average.update(model)
    assert torch.equal(average.model[1].running_mean, model[1].running_mean)
    assert float(average.model[1].running_mean.abs().sum()) > 0


def test_learning_rate_steps_down_after_each_decay_step():
    rates = [train_state.learning_rate(1e-2, [3, 5], 0.5, done) for done in range(7)]
    assert rates == [1e-2] * 3 + [5e-3] * 2 + [2.5e-3] * 2
    assert train_state.learning_rate(1e-3, [], 0.1, 10**6) == 1e-3


def test_cosine_learning_rate_anneals_to_zero_over_the_run_and_ignores_decay_steps():
    rates = [train_state.learning_rate(1e-2, [1], 0.5, done, cosine_steps=4) for done in range(6)]
    expected = [1e-2, 1e-2 * (1 + 2**-0.5) / 2, 5e-3, 1e-2 * (1 - 2**-0.5) / 2, 0.0, 0.0]
    assert rates == pytest.approx(expected, abs=1e-12)
