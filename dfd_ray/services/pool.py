"""The renderer pool: N renderer actors, scenes routed by a stable hash, and the autograd bridge.

    pool = RendererPool(cfg)                       # created by the driver
    priors, answers = pool.step_batch(prior_requests, render_requests(coc, targets, scene_ids, windows))
    loss = RenderLoss.apply(coc, answers)          # one round trip per actor for the whole step
    loss.backward()                                # ordinary PyTorch from here on

Actors restart after a crash (`max_restarts`) and Ray retries the calls that were in flight on
them (`max_task_retries=-1`), so a caller sees latency, not an error; a restarted actor reloads
its scenes from the splat store on first use. The pool is picklable: training workers receive it
and call the actors directly.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from dfd_ray.config import ConfigError
from dfd_ray.services.renderer import RendererCore, RendererPoolConfig, Window


class RendererPool:
    def __init__(self, cfg: RendererPoolConfig) -> None:
        import ray

        if not cfg.splat_store:
            raise ConfigError("config key 'splat_store' is required (where scene splats live)")
        self.cfg = cfg
        actor = ray.remote(RendererCore).options(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
            max_restarts=cfg.max_restarts, max_task_retries=-1,
        )
        self.actors = [actor.remote(cfg) for _ in range(cfg.num_actors)]

    @staticmethod
    def actor_index_of(scene_id: str, num_actors: int) -> int:
        """Stable across processes and runs (Python's hash() is salted per process)."""
        return zlib.crc32(scene_id.encode()) % num_actors

    def actor_index(self, scene_id: str) -> int:
        return self.actor_index_of(scene_id, len(self.actors))

    def _actor(self, scene_id: str):
        return self.actors[self.actor_index(scene_id)]

    def render(self, scene_id: str, focus_distance: float | None = None, coc_map=None,
               window: Window | None = None) -> dict[str, np.ndarray]:
        import ray

        return ray.get(self._actor(scene_id).render.remote(scene_id, focus_distance, coc_map, window))

    def render_loss_and_grad(self, scene_id: str, focus_distance: float | None, coc_map, target_image,
                             window: Window | None = None) -> tuple[float, np.ndarray]:
        request = {"scene_id": scene_id, "focus_distance": focus_distance, "coc_map": coc_map,
                   "target_image": target_image, "window": window}
        return self.render_loss_and_grad_batch([request])[0]

    def render_loss_and_grad_batch(self, requests: list[dict[str, Any]]) -> list[tuple[float, np.ndarray]]:
        """One round trip per actor involved; results in request order."""
        return self.step_batch([], requests)[1]

    def priors_batch(self, requests: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The scene fits' (depth, confidence) for each request's scene and window."""
        return self.step_batch(requests, [])[0]

    def step_batch(self, priors: list[dict[str, Any]], renders: list[dict[str, Any]]) -> tuple[list, list]:
        """A training step's renderer work, one round trip per actor for both: the priors of
        `priors` and the (loss, gradient) of `renders`, each in request order."""
        import ray

        request_lists = (priors, renders)
        by_actor: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for k, requests in enumerate(request_lists):
            for i, request in enumerate(requests):
                by_actor[self.actor_index(request["scene_id"])][k].append(i)
        refs = {a: self.actors[a].step_batch.remote(*[[requests[i] for i in members[k]]
                                                      for k, requests in enumerate(request_lists)])
                for a, members in by_actor.items()}
        results = ([None] * len(priors), [None] * len(renders))
        for a, members in by_actor.items():
            for k, answers in enumerate(ray.get(refs[a])):
                for i, answer in zip(members[k], answers):
                    results[k][i] = answer
        return results

    def stats(self) -> list[dict]:
        import ray

        return ray.get([a.stats.remote() for a in self.actors])

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)


def render_requests(coc_maps: torch.Tensor, targets: torch.Tensor, scene_ids: list[str],
                    windows: list[Window] | None = None) -> list[dict[str, Any]]:
    """Render-loss requests for B slices: predicted CoC maps (B, h, w) [px] and the slices they
    must reproduce (B, h, w, 3, linear), each in its scene's `window` (None = the whole sensor)."""
    maps, images = coc_maps.detach().float().cpu().numpy(), targets.detach().float().cpu().numpy()
    return [{"scene_id": sid, "coc_map": maps[i], "target_image": images[i],
             "window": None if windows is None else tuple(int(v) for v in windows[i])}
            for i, sid in enumerate(scene_ids)]


class RenderLoss(torch.autograd.Function):
    """The mean render loss of B slices as an autograd node, from the renderer's answers (loss,
    d loss / d CoC map) to `render_requests(coc_maps, ...)`: the value is their mean, the gradient
    in coc_maps their gradients / B, scaled by the incoming gradient."""

    @staticmethod
    def forward(ctx, coc_maps: torch.Tensor, answers: list[tuple[float, np.ndarray]]) -> torch.Tensor:
        grads = torch.from_numpy(np.stack([g for _, g in answers])).to(coc_maps.device, coc_maps.dtype)
        ctx.save_for_backward(grads)
        return torch.tensor(float(np.mean([l for l, _ in answers])), dtype=coc_maps.dtype, device=coc_maps.device)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grads,) = ctx.saved_tensors
        return grad_output * grads / grads.shape[0], None
