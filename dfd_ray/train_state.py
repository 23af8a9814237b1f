"""The training state: what a checkpoint holds and how training resumes from it.

A checkpoint folder holds model.pt / model.json (so any checkpoint is a model URI; with a weight
average the served weights are the average and the optimiser's own are kept in online.pt),
optim.pt and state.json (step, metric history, averaging count). The learning-rate schedule is a
function of the step, so a resumed run follows its own config.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence

import torch

from dfd_ray.models import DFDModel, save_model


class WeightAverage:
    """Exponential moving average of a model's weights: what checkpoints serve as the model.

    Meant for the late swings of Adam's weights (held-out AbsRel moved by 0.1-0.2 between reports
    at a constant rate, docs/benchmarks.md); measured only on a run that never left the
    predict-a-constant plateau, where it made no difference (docs/benchmarks.md). The decay
    warms up as min(decay, (1 + n) / (10 + n)) after n updates, so a short run is not served its
    initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - decay)
        for served, online in zip(self.model.buffers(), model.buffers()):  # batch-norm statistics: the latest
            served.copy_(online)


ONLINE_WEIGHTS = "online.pt"  # the optimiser's own weights, where model.pt holds the served average


def save_training_state(folder: str, model: DFDModel, optimiser: torch.optim.Optimizer, step: int,
                        history: list[dict], supervision: str, average: WeightAverage | None = None) -> None:
    """model.pt + model.json (a loadable model: the weight average where there is one, with the
    optimiser's weights in online.pt beside it), optim.pt and state.json into `folder`."""
    served = average.model if average is not None else model
    save_model(served, folder, {"trained_steps": step, "supervision": supervision,
                                "weights": "ema" if average is not None else "online"})
    if average is not None:
        torch.save(model.state_dict(), os.path.join(folder, ONLINE_WEIGHTS))
    torch.save(optimiser.state_dict(), os.path.join(folder, "optim.pt"))
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump({"step": step, "history": history,
                   "ema_updates": average.updates if average is not None else 0}, f)


def load_training_state(folder: str, model: DFDModel, optimiser: torch.optim.Optimizer,
                        average: WeightAverage | None = None) -> tuple[int, list[dict]]:
    """Restore model, optimiser and weight average in place (weights_only loads); returns (step, history).

    A checkpoint without online.pt (written without weight averaging) holds the optimiser's
    weights in model.pt; an average switched on at resume starts from them.
    """
    online = os.path.join(folder, ONLINE_WEIGHTS)
    served = torch.load(os.path.join(folder, "model.pt"), weights_only=True)
    model.load_state_dict(torch.load(online, weights_only=True) if os.path.exists(online) else served)
    optimiser.load_state_dict(torch.load(os.path.join(folder, "optim.pt"), weights_only=True))
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    if average is not None:
        average.model.load_state_dict(served)
        average.updates = int(state.get("ema_updates", 0))
    return state["step"], state["history"]


def learning_rate(lr: float, decay_at: Sequence[int], decay: float, steps_done: int, cosine_steps: int = 0) -> float:
    """The rate of the step after `steps_done` steps: `lr`, times `decay` for each step of `decay_at` passed;
    or, with `cosine_steps` > 0, `lr` annealed to 0 over that many steps along half a cosine (`decay_at`
    and `decay` unused).

    A function of the step, set before every update, so that a resumed or extended run follows the
    schedule of its config; the rate stored in a checkpoint's optimiser state is not used.
    """
    if cosine_steps > 0:
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(steps_done, cosine_steps) / cosine_steps))
    return lr * decay ** sum(steps_done >= s for s in decay_at)
