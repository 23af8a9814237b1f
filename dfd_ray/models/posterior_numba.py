"""One photo's lens posterior, per pixel, compiled with numba: the fast CPU path of `DepthNet.decode_photo`.

Mirrors the torch path in `nets.py` (`coc_log_likelihood` + `side_log_likelihood` → `decode`, and
`near_logit`) value for value and gradient for gradient, the way the splat compositor's numba
backend mirrors its torch one. The torch path builds (N, K, H, W) tensors, about ten of them
forward and more backward; they were two thirds of a training step's time (docs/benchmarks.md,
"The lens posterior in one pass"). Here each pixel walks its K bins in registers, and only the
normalised weights are kept for the backward pass.

Per pixel, with c the CoC, b its scale, z the side logit, s the focus distance and G the gain
(docs/design.md §8), over the grid u_k (descending inverse depths, depths t_k = 1/u_k ascending):

    a_k = -|c - G |u_k - 1/s|| / b + log prior_k                 (the evidence of the CoC)
    q_k = a_k + log sigmoid(±z) + log u_k - conf (log t_k - log d_splat)² / (2 σ²)

the depth is the median of the depths t_k weighted by exp(q_k) (linear between grid points: the
1/t-weighted posterior median, AbsRel-optimal), and the side evidence is
log Σ_front exp(a_k) - log Σ_behind exp(a_k), so that the posterior's side log-odds are z plus it
(±inf where one side of the focus plane has no bins). The -log b of the likelihood and the
normalisation are the same for every bin, so they move neither output.

The median's gradient, with C_k the normalised cumulative weight, j the first bin at or past one
half, i = j - 1, Δ = C_j - C_i and f = (1/2 - C_i) / Δ the interpolation fraction, is

    dm/dq_l = (t_j - t_i) / Δ · w_l · (-1/2 for l <= i, 1/2 - f for l = j, 1/2 for l > j)

(w_l the normalised weight; these sum to 0), and it reaches c, b and z through q. The side
evidence is not differentiated (the torch path detaches the CoC there too), nor is the splat
factor (data, not a prediction).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from dfd_ray.numba_threads import launch


@numba.njit(inline="always")
def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@numba.njit(inline="always")
def _bins(p, hw, coc, scale, side, inv_focus, gain, u, log_t, log_prior, splat_log_depth, splat_weight, w):
    """Fill w (K,) with pixel p's weights of the depth median, relative to a peak (not normalised);
    return (their sum, the side evidence)."""
    n = p // hw
    c, b, inv_s, g = coc[p], scale[p], inv_focus[n], gain[n]
    near_side, far_side = _sigmoid(side[p]), _sigmoid(-side[p])
    k_bins = u.shape[0]
    a_max, inv_b = -np.inf, 1.0 / b
    for k in range(k_bins):
        a = log_prior[k] - abs(c - g * abs(u[k] - inv_s)) * inv_b
        w[k] = a
        a_max = max(a_max, a)
    front = behind = total = 0.0
    if splat_weight[p] == 0.0:
        # One exp per bin: the other factors are u_k and sigmoid(±z), at most 30x and 1e13 apart,
        # so no weight that matters underflows (float64).
        for k in range(k_bins):
            m = math.exp(w[k] - a_max)
            if u[k] > inv_s:
                front += m
                w[k] = m * u[k] * near_side
            else:
                behind += m
                w[k] = m * u[k] * far_side
            total += w[k]
    else:  # the splat factor can be e^-500 away from the CoC's peak: the log domain, two exps
        q_max, log_near, log_far = -np.inf, math.log(near_side), math.log(far_side)
        for k in range(k_bins):
            m = math.exp(w[k] - a_max)
            d = log_t[k] - splat_log_depth[p]
            if u[k] > inv_s:
                front += m
                w[k] += log_near
            else:
                behind += m
                w[k] += log_far
            w[k] -= log_t[k] + splat_weight[p] * d * d
            q_max = max(q_max, w[k])
        for k in range(k_bins):
            w[k] = math.exp(w[k] - q_max)
            total += w[k]
    if front == 0.0:
        return total, -np.inf
    if behind == 0.0:
        return total, np.inf
    return total, math.log(front) - math.log(behind)


@numba.njit(inline="always")
def _median(w, total, t):
    """The median of the depths t weighted by w (summing to total): (depth, i, j, fraction, Δ),
    Δ = w_j / total; j = 0 or an unreached half (rounding) gives Δ = 0: no gradient, as the
    torch path's clamps."""
    k_bins = w.shape[0]
    half = 0.5 * total
    j, cum = k_bins - 1, 0.0
    for k in range(k_bins):
        if cum + w[k] >= half:
            j = k
            break
        cum += w[k]
    if j == 0:
        return t[0], 0, 0, 1.0, 0.0
    frac = (half - cum) / max(w[j], 1e-12 * total)
    delta = w[j] / total if 0.0 <= frac <= 1.0 else 0.0
    frac = min(max(frac, 0.0), 1.0)
    return t[j - 1] + frac * (t[j] - t[j - 1]), j - 1, j, frac, delta


@numba.njit(parallel=True, cache=True)
def _forward(coc, scale, side, inv_focus, gain, hw, u, log_prior, splat_log_depth, splat_weight):
    """Per pixel: depth, side evidence, and for the backward pass the weights (P, K) as float32
    over their sum, the median's bins i, j, its fraction and Δ (0: no gradient)."""
    k_bins = u.shape[0]
    t = 1.0 / u
    log_t = np.log(t)
    n_pix = coc.shape[0]
    depth, evidence = np.empty(n_pix), np.empty(n_pix)
    weights = np.empty((n_pix, k_bins), np.float32)
    bins, frac, delta = np.empty((n_pix, 2), np.int64), np.empty(n_pix), np.empty(n_pix)
    for p in numba.prange(n_pix):
        w = np.empty(k_bins)
        total, evidence[p] = _bins(p, hw, coc, scale, side, inv_focus, gain, u, log_t, log_prior,
                                   splat_log_depth, splat_weight, w)
        depth[p], bins[p, 0], bins[p, 1], frac[p], delta[p] = _median(w, total, t)
        for k in range(k_bins):
            weights[p, k] = w[k] / total
    return depth, evidence, weights, bins, frac, delta


@numba.njit(parallel=True, cache=True)
def _backward(coc, scale, side, inv_focus, gain, hw, u, weights, bins, frac, delta, grad_depth):
    k_bins = u.shape[0]
    t = 1.0 / u
    grads = np.zeros((3, coc.shape[0]))
    for p in numba.prange(coc.shape[0]):
        if delta[p] == 0.0:
            continue
        i, j, f = bins[p, 0], bins[p, 1], frac[p]
        n = p // hw
        c, b, inv_s, g = coc[p], scale[p], inv_focus[n], gain[n]
        lead = grad_depth[p] * (t[j] - t[i]) / delta[p]
        g_c = g_b = g_front = g_behind = 0.0
        for k in range(k_bins):
            share = -0.5 if k <= i else (0.5 - f if k == j else 0.5)
            g_q = lead * weights[p, k] * share
            r = c - g * abs(u[k] - inv_s)
            g_c -= g_q * (1.0 if r > 0 else (-1.0 if r < 0 else 0.0)) / b
            g_b += g_q * abs(r) / (b * b)
            if u[k] > inv_s:
                g_front += g_q
            else:
                g_behind += g_q
        sig = _sigmoid(side[p])
        grads[0, p], grads[1, p], grads[2, p] = g_c, g_b, (1.0 - sig) * g_front - sig * g_behind
    return grads


def _flat(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().reshape(-1).double().numpy())


class _DecodePhoto(torch.autograd.Function):
    """(coc, scale, side (N, H, W), focus distances (N,) m, gains (N,) px·m, splat factor) → (depth m, side evidence)."""

    @staticmethod
    def forward(ctx, coc, scale, side, focus, gain, inverse_depths, log_prior, splat_log_depth, splat_weight):
        n, h, w = coc.shape
        # 1/s in the caller's precision, as the torch path compares the grid with it (which bins are in front)
        args = (_flat(coc), _flat(scale), _flat(side), _flat(1.0 / focus), _flat(gain), h * w,
                _flat(inverse_depths), _flat(log_prior), _flat(splat_log_depth), _flat(splat_weight))
        depth, evidence, *median = launch(_forward, *args)
        ctx.args, ctx.median, ctx.dtype = args[:7], median, coc.dtype
        out = torch.from_numpy(depth).to(coc.dtype).reshape(n, h, w)
        evid = torch.from_numpy(evidence).to(coc.dtype).reshape(n, h, w)
        ctx.mark_non_differentiable(evid)
        return out, evid

    @staticmethod
    def backward(ctx, grad_depth, _grad_evidence):
        grads = launch(_backward, *ctx.args, *ctx.median, _flat(grad_depth))
        shape = grad_depth.shape
        g_c, g_b, g_z = (torch.from_numpy(g).to(ctx.dtype).reshape(shape) for g in grads)
        return g_c, g_b, g_z, None, None, None, None, None, None


def decode_photo(coc: torch.Tensor, scale: torch.Tensor, side: torch.Tensor, focus: torch.Tensor, gain: torch.Tensor,
                 inverse_depths: torch.Tensor, log_prior: torch.Tensor, splat_log_depth: torch.Tensor,
                 splat_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU tensors: CoC and scale (N, H, W) px, side logit (N, H, W), focus (N,) m, gain (N,) px·m, the
    grid (K,) 1/m and its log prior (K,), a splat depth factor (N, H, W): log depth [log m] and weight
    conf / (2 σ²) (0 = none) → depth (N, H, W) m (differentiable in coc, scale, side) and the side
    evidence (N, H, W) (not differentiable)."""
    if coc.device.type != "cpu":
        raise ValueError(f"posterior_numba needs CPU tensors, got {coc.device}; use the torch path")
    return _DecodePhoto.apply(coc, scale, side, focus, gain, inverse_depths, log_prior, splat_log_depth, splat_weight)
