"""Self-supervised losses (no GT depth, no AIF; docs/design.md §1), plain PyTorch.

Shapes: B stacks of S slices, maps (B, S, H, W); per-slice lens quantities (B, S).
"""

from __future__ import annotations

import torch


def thin_lens_consistency(coc: torch.Tensor, depth: torch.Tensor, focus: torch.Tensor,
                          gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Siamese constraint: (CoC term, depth term).

    CoC term: each slice's predicted CoC must equal what every other slice's depth predicts at
    this slice's focus, c_s ≈ G_s |1/d_t - 1/s_s| (pixels). Depth term: one scene has one depth,
    |log d_s - log d_t|. Both averaged over ordered pairs s != t and pixels.
    """
    b, s = coc.shape[:2]
    if s < 2:
        zero = coc.sum() * 0
        return zero, zero
    inv = 1.0 / depth  # (B, S, H, W)
    # predicted[b, s, t] = G_s |1/d_t - 1/s_s|
    predicted = gain[:, :, None, None, None] * (inv[:, None] - 1.0 / focus[:, :, None, None, None]).abs()
    coc_err = (coc[:, :, None] - predicted).abs()
    log_d = torch.log(depth)
    depth_err = (log_d[:, :, None] - log_d[:, None]).abs()
    off_diag = ~torch.eye(s, dtype=torch.bool, device=coc.device)
    return coc_err[:, off_diag].mean(), depth_err[:, off_diag].mean()


def depth_error(depth: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-pixel error of depth against a target depth (metres), both > 0.

    "rel": |d - t| / t, the AbsRel of the evaluation (docs/design.md §6). Where one image leaves the depth
    uncertain (which side of the focus plane, how far beyond it), the prediction that minimises
    it is the median of the depth posterior weighted by 1/t; "log": |log d - log t|, whose
    minimiser is the plain median, which is farther away and costs AbsRel wherever the posterior
    is wide. The best constant of the benchmark is the same 1/t-weighted median over all pixels.
    """
    if kind == "rel":
        return (depth - target).abs() / target
    if kind == "log":
        return (torch.log(depth) - torch.log(target)).abs()
    raise ValueError(f"depth error kind must be 'rel' or 'log', got {kind!r}")


def splat_prior(depth: torch.Tensor, splat_depth: torch.Tensor, confidence: torch.Tensor,
                kind: str) -> torch.Tensor:
    """Confidence-weighted depth error against the splat depth: the scene fit as a teacher where it is sure."""
    return (confidence * depth_error(depth, splat_depth.clamp_min(1e-3), kind)).mean()


def edge_aware_smoothness(value: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean |∇ value| · exp(-|∇ image|): smooth inside regions, free to jump at image edges.

    value (N, H, W); image (N, 3, H, W) in [0, 1].
    """
    dx_v = (value[..., :, 1:] - value[..., :, :-1]).abs()
    dy_v = (value[..., 1:, :] - value[..., :-1, :]).abs()
    dx_i = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(-3)
    dy_i = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(-3)
    return (dx_v * torch.exp(-10 * dx_i)).mean() + (dy_v * torch.exp(-10 * dy_i)).mean()


def _weighted_mean(value: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (weight * value).sum() / weight.sum().clamp_min(1e-6)


def coc_teacher(coc: torch.Tensor, scale: torch.Tensor, target: torch.Tensor,
                confidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CoC term, scale term): the defocus-map teacher, confidence-weighted over pixels.

    CoC term: |c - c_t| (pixels), so that SDNet's CoC is the teacher's conditional median.
    Scale term: the Laplace negative log-likelihood |c - c_t| / b + log b of the predicted error
    scale b with c held fixed, so that b learns how far off c is without slowing c's own loss
    where the blur is hard to read. All maps (B, S, H, W) or broadcastable.
    """
    err = (coc - target).abs()
    return _weighted_mean(err, confidence), _weighted_mean(err.detach() / scale + torch.log(scale), confidence)


def posterior_nll(log_posterior: torch.Tensor, inverse_depths: torch.Tensor, target_depth: torch.Tensor,
                  confidence: torch.Tensor) -> torch.Tensor:
    """Confidence-weighted negative log-probability of the teacher's depth under the depth posterior.

    log_posterior (..., K, H, W) over the uniform, descending inverse-depth grid `inverse_depths` (K,) [1/m]
    (normalised here); target_depth and confidence (..., H, W), depth in metres (clamped to the
    grid). The target's probability is read between its two neighbouring bins, linearly in
    inverse depth, so the loss moves smoothly with the target. Unlike an L1 on the CoC, whose
    target G |u_t - 1/s| folds a teacher's depth noise into a positive CoC near the focus plane
    (the conditional median of a folded noise is > 0), this is minimised by the posterior that
    matches the teacher's spread in inverse depth on both sides of the plane (docs/design.md §8).
    """
    log_p = torch.log_softmax(log_posterior, dim=-3)
    k = inverse_depths.numel()
    u = (1.0 / target_depth).clamp(float(inverse_depths[-1]), float(inverse_depths[0]))
    position = (inverse_depths[0] - u) / (inverse_depths[0] - inverse_depths[-1]) * (k - 1)  # 0 .. K-1
    lo = position.floor().long().clamp(max=k - 2)
    frac = (position - lo).unsqueeze(-3)
    pair = log_p.gather(-3, torch.stack([lo, lo + 1], dim=-3))
    nll = -((1 - frac) * pair[..., :1, :, :] + frac * pair[..., 1:, :, :]).squeeze(-3)
    return _weighted_mean(nll, confidence)


def side_teacher(near_logit: torch.Tensor, near: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy of a log-odds of being in front of the focus plane against
    the teacher's side `near` (1 in front, 0 behind)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(near_logit, near, reduction="none")
    return _weighted_mean(bce, weight)
