"""The training step: one batch of focal-stack crops → the weighted loss of every switched-on term.

Plain PyTorch (no Ray): `dfd_ray.train` runs it inside Ray Train's workers with the renderer
pool, tests run it in-process. The terms and their targets are docs/design.md §8.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from dfd_ray import imaging, losses, optics, streaming
from dfd_ray.models import DFDModel
from dfd_ray.services.pool import RenderLoss, render_requests


class Renderer(Protocol):
    """What the render and prior terms ask of a renderer (`RendererPool`, or `RendererCore` in-process):
    the priors and the render losses and gradients of one step, in one call (one round trip per actor)."""

    def step_batch(self, priors: list[dict[str, Any]], renders: list[dict[str, Any]]) -> tuple[list, list]: ...


@dataclass
class LossWeights:
    """Weights of the loss terms; 0 switches a term off (and with render and prior both 0 no
    renderer pool is started, so no scene needs a splat fit)."""

    teacher_coc: float = 1.0  # SDNet's CoC vs the teacher's through the thin lens (pixels), confidence-weighted
    teacher_scale: float = 0.1  # Laplace likelihood of SDNet's predicted CoC error scale
    teacher_nll: float = 0.0  # -log posterior of the teacher's depth (trains CoC, scale and side as one density)
    side: float = 0.2  # the posterior's side of the focus plane vs the teacher's (cross-entropy; trains the side net)
    lens_coc: float = 0.1  # Siamese: each slice's CoC vs the other slices' depths (pixels)
    lens_depth: float = 0.05  # Siamese: one scene, one depth (log metres)
    render: float = 0.0  # slice re-rendered from the scene's splats with the predicted CoC (renderer pool)
    prior: float = 0.0  # depth pulled to the splat depth where the fit is confident (renderer pool)
    smooth: float = 0.01  # edge-aware smoothness of log depth and CoC


SIDE_MIN_COC_PX = 0.5  # below this teacher CoC both sides of the focus plane blur alike: the side is not taught


def _flip(maps: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Apply (or undo: flips are their own inverse) each sample's flips to maps (B, ..., H, W)."""
    out = maps.clone()
    for b in range(maps.shape[0]):
        dims = [d for d, f in zip((-2, -1), flipped[b].tolist()) if f]
        if dims:
            out[b] = torch.flip(maps[b], dims)
    return out


def teacher_targets(depth: torch.Tensor, conf: torch.Tensor, focus: torch.Tensor,
                    gain: torch.Tensor) -> dict[str, torch.Tensor]:
    """A teacher depth map (B, 1, h, w) in metres (0 = none) and its confidence, with each slice's
    focus distance (B, S) [m] and CoC gain (B, S) [px·m, `optics.Lens.gain_px`] → per slice
    (B, S, h, w): the target depth (m; 1 where there is none, weighed 0), the target CoC (px), the
    side (1 in front of the focus plane), and the weights of the CoC and side terms."""
    valid = depth > 0
    d = torch.where(valid, depth, torch.ones_like(depth))
    s = focus[:, :, None, None]
    coc = optics.coc_px_at_inverse_depth(1.0 / d, s, gain[:, :, None, None])
    weight = conf * valid.to(conf.dtype)
    return {"depth": d.expand_as(coc), "coc": coc, "near": (d < s).to(d.dtype), "weight": weight.expand_as(coc),
            "side_weight": weight * (coc >= SIDE_MIN_COC_PX).to(coc.dtype)}


def model_module(model: torch.nn.Module) -> DFDModel:
    """The DFDModel inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def training_step(model: torch.nn.Module, batch: dict, weights: LossWeights, *, supervision: str = "self",
                  depth_loss: str = "log", renderer: Renderer | None = None,
                  ) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
    """One step's loss, its logged terms and the predictions (coc, depth: (B, S, h, w)).

    `batch` is a batch of `dfd_ray.streaming` samples (with teacher maps for `supervision="self"`);
    `renderer` serves the render and prior terms: the Ray pool in training, or one in-process
    `RendererCore` (both answer `step_batch`).
    """
    images = batch["images"].float()  # (B, S, 3, h, w) sRGB in [0, 1]
    b, s, _, h, w = images.shape
    focus = batch["focus_distances"].float()  # (B, S)
    lens = optics.Lens(*(batch[k].float()[:, None].expand(b, s) for k in ("focal_length", "f_number", "pixel_size")))
    gain = lens.gain_px(focus)  # (B, S) px·m
    flat = images.reshape(b * s, 3, h, w)
    out = model(flat, focus.reshape(-1), optics.Lens(*(v.reshape(-1) for v in (lens.focal_length, lens.f_number, lens.pixel_size))),
                likelihood=weights.teacher_nll > 0)
    coc, depth = out["coc"].reshape(b, s, h, w), out["depth"].reshape(b, s, h, w)

    if supervision == "gt":
        gt = batch["depth"].float()
        teacher = teacher_targets(gt, (gt > 0).float(), focus, gain)
    else:
        teacher = teacher_targets(batch["teacher_depth"].float(), batch["teacher_conf"].float(), focus, gain)
    terms: dict[str, torch.Tensor] = {}
    terms["teacher_coc"], terms["teacher_scale"] = losses.coc_teacher(
        coc, out["coc_scale"].reshape(b, s, h, w), teacher["coc"], teacher["weight"])
    if weights.teacher_nll > 0:
        depthnet = model_module(model).depthnet
        terms["teacher_nll"] = losses.posterior_nll(depthnet.log_posterior(out["log_likelihood"]).reshape(b, s, -1, h, w),
                                                    depthnet.inverse_depths, teacher["depth"], teacher["weight"])
    two_sided = model_module(model).depthnet.has_both_sides(focus.reshape(-1)).reshape(b, s, 1, 1).float()
    terms["side"] = losses.side_teacher(out["near_logit"].reshape(b, s, h, w), teacher["near"],
                                        teacher["side_weight"] * two_sided)
    terms["lens_coc"], terms["lens_depth"] = losses.thin_lens_consistency(coc, depth, focus, gain)
    terms["smooth"] = (losses.edge_aware_smoothness(torch.log(out["depth"]), flat)
                       + losses.edge_aware_smoothness(out["coc"] / model_module(model).cfg.max_coc_px, flat))

    service_seconds = 0.0  # time in renderer-service round trips, for the throughput report
    if renderer is not None:
        scene_ids = streaming.scene_ids(batch)
        windows = [tuple(int(v) for v in box) for box in batch["crop_box"]]
        prior_requests = [{"scene_id": sid, "window": win} for sid, win in zip(scene_ids, windows)] if weights.prior > 0 else []
        renders = []
        if weights.render > 0:
            coc_sensor = _flip(coc, batch["flipped"]).reshape(b * s, h, w)  # the renderer sees the sensor as it is
            targets = torch.from_numpy(imaging.srgb_to_linear(images.permute(0, 1, 3, 4, 2).numpy()))
            targets = _flip(targets.permute(0, 1, 4, 2, 3), batch["flipped"]).permute(0, 1, 3, 4, 2)
            renders = render_requests(coc_sensor, targets.reshape(b * s, h, w, 3),
                                      [sid for sid in scene_ids for _ in range(s)], [win for win in windows for _ in range(s)])
        t0 = time.perf_counter()
        priors, answers = renderer.step_batch(prior_requests, renders)
        service_seconds = time.perf_counter() - t0
        if priors:
            prior_depth = _flip(torch.from_numpy(np.stack([d for d, _ in priors])), batch["flipped"])  # (B, h, w)
            prior_conf = _flip(torch.from_numpy(np.stack([c for _, c in priors])), batch["flipped"])
            terms["prior"] = losses.splat_prior(depth, prior_depth[:, None], prior_conf[:, None], depth_loss)
        if answers:
            terms["render"] = RenderLoss.apply(coc_sensor, answers)
    loss = sum(getattr(weights, k) * v for k, v in terms.items() if getattr(weights, k) > 0)
    logged = {k: float(v.detach()) for k, v in terms.items()} | {"time_service_s": service_seconds}
    if batch["has_depth"].any():  # monitoring only; never a training signal in self-supervision
        gt = batch["depth"].float().expand(b, s, h, w)
        valid = gt > 0
        logged["monitor_abs_rel"] = float(((depth.detach() - gt).abs() / gt.clamp_min(1e-6))[valid].mean())
        gt_coc = teacher_targets(batch["depth"].float(), torch.ones_like(gt[:, :1]), focus, gain)["coc"]
        logged["monitor_coc_mae_px"] = float((coc.detach() - gt_coc).abs()[valid].mean())
    return loss, logged, {"coc": coc, "depth": depth}
