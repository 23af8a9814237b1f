"""Tile-based front-to-back alpha compositing compiled with numba: the fast CPU backend.

Mirrors `composite_torch.composite` (same inputs, outputs and per-pixel rules, docs/design.md §3)
the way gsplat's CUDA rasterizer does: each Gaussian is listed in the 16×16 tiles its box
overlaps, in depth order; every pixel meets its tile's Gaussians front to back (those whose box
holds it), skipping pairs with alpha < 1/255 and stopping before the Gaussian that would take its
transmittance to 1e-4 or below. The backward pass is written by hand and walks the same lists
in the same order: the suffix sum Σ_{k>i} w_k (g·f_k) that dL/dalpha_i needs is the pixel's total
g·acc minus the running prefix, so no division by (1 - alpha) is needed. Arithmetic is float64
inside the kernels whatever the input dtype; tiles are independent, so they run on numba's threads
(as many as torch is set to use), and each tile writes its own rows of the per-entry gradients,
summed per Gaussian afterwards.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from dfd_ray.numba_threads import launch
from dfd_ray.splat.composite_torch import MAX_ALPHA, T_MIN, boxes
from dfd_ray.splat.project import ALPHA_THRESHOLD, Projected

TILE = 16  # pixels per tile side, as gsplat's


@numba.njit(cache=True)
def _tile_lists(order, box, visible, n_img, n, tiles_x, tiles_y):
    """Each tile's Gaussians front to back: (offsets (n_tiles + 1,), entries: flat Gaussian indices).
    `order` holds each image's Gaussians (flat indices into B·N) sorted by depth, image by image."""
    per_img = tiles_x * tiles_y
    counts = np.zeros(n_img * per_img + 1, np.int64)
    for g in order:
        if visible[g]:
            base = (g // n) * per_img
            for ty in range(box[g, 2] // TILE, box[g, 3] // TILE + 1):
                for tx in range(box[g, 0] // TILE, box[g, 1] // TILE + 1):
                    counts[base + ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    entries = np.empty(offsets[-1], np.int64)
    for g in order:
        if visible[g]:
            base = (g // n) * per_img
            for ty in range(box[g, 2] // TILE, box[g, 3] // TILE + 1):
                for tx in range(box[g, 0] // TILE, box[g, 1] // TILE + 1):
                    t = base + ty * tiles_x + tx
                    entries[fill[t]] = g
                    fill[t] += 1
    return offsets, entries


# A pair whose power exceeds log(opacity / ALPHA_THRESHOLD) by this much is below the alpha cut
# whatever exp's rounding: it is skipped without evaluating exp (the cut itself is still decided
# by the exact rule below, so the pairs that count are the same as composite_torch's).
CUT_MARGIN = 1e-6


@numba.njit(inline="always")
def _pair(mx, my, ca, cb, cc, opacity, cut, px, py):
    """(alpha, e^-power, dx, dy) of one Gaussian (centre mx, my; conic ca, cb, cc; `cut` =
    log(opacity / ALPHA_THRESHOLD) + CUT_MARGIN) at pixel (px, py); alpha = 0 where the pair is skipped."""
    dx = px + 0.5 - mx
    dy = py + 0.5 - my
    power = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    if power < 0.0 or power > cut:
        return 0.0, 0.0, dx, dy
    falloff = math.exp(-power)
    alpha = min(MAX_ALPHA, opacity * falloff)
    if alpha < ALPHA_THRESHOLD:
        return 0.0, falloff, dx, dy
    return alpha, falloff, dx, dy


@numba.njit(inline="always")
def _visit(mx, my, ca, cb, cc, opacity, cut, px, py, t, stopped, r, c):
    """The compositing rule at one pixel (tile-local r, c) for its next Gaussian: (alpha, e^-power,
    dx, dy, transmittance before it), alpha = 0 where it does not contribute. Advances the pixel's
    transmittance `t` and its `stopped` flag: the one place both passes decide which pairs count."""
    if stopped[r, c]:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    alpha, falloff, dx, dy = _pair(mx, my, ca, cb, cc, opacity, cut, px, py)
    if alpha == 0.0:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    t_here = t[r, c]
    t_next = t_here * (1.0 - alpha)
    if t_next <= T_MIN:
        stopped[r, c] = True
        return 0.0, 0.0, 0.0, 0.0, 0.0
    t[r, c] = t_next
    return alpha, falloff, dx, dy, t_here


@numba.njit(inline="always")
def _box_in_tile(box, g, ty0, tx0, rows, cols):
    """Rows [y_start, y_end) and columns [x_start, x_end) of Gaussian g's box inside the tile."""
    return (max(box[g, 2], ty0), min(box[g, 3], ty0 + rows - 1) + 1,
            max(box[g, 0], tx0), min(box[g, 1], tx0 + cols - 1) + 1)


@numba.njit(inline="always")
def _tile_window(tile, per_img, tiles_x, height, width):
    """(image, first row, first column, rows, columns) of a tile."""
    b, rest = tile // per_img, tile % per_img
    y0, x0 = (rest // tiles_x) * TILE, (rest % tiles_x) * TILE
    return b, y0, x0, min(TILE, height - y0), min(TILE, width - x0)


@numba.njit(inline="always")
def _cut(opacity):
    return math.log(max(opacity, 1e-300) / ALPHA_THRESHOLD) + CUT_MARGIN


@numba.njit(parallel=True, cache=True)
def _forward(feat, payload, box, offsets, entries, n_img, height, width, tiles_x, tiles_y):
    """acc (B·H·W, P): Σ_i alpha_i T_i payload_i per pixel.

    Within a tile the loop runs entry by entry over the pixels of the entry's box (each pixel
    still meets its Gaussians in depth order, with its own transmittance and stop flag), so the
    work is the pairs inside the boxes, not every tile pixel against every tile entry. An entry's
    Gaussian is read into locals once, before its pixels."""
    n_pay = payload.shape[1]
    acc = np.zeros((n_img * height * width, n_pay))
    per_img = tiles_x * tiles_y
    for tile in numba.prange(n_img * per_img):
        b, ty0, tx0, rows, cols = _tile_window(tile, per_img, tiles_x, height, width)
        t = np.ones((rows, cols))
        stopped = np.zeros((rows, cols), np.bool_)
        pay = np.empty(n_pay)
        for e in range(offsets[tile], offsets[tile + 1]):
            g = entries[e]
            mx, my, ca, cb, cc, opacity = feat[g, 0], feat[g, 1], feat[g, 2], feat[g, 3], feat[g, 4], feat[g, 5]
            cut = _cut(opacity)
            for k in range(n_pay):
                pay[k] = payload[g, k]
            y_start, y_end, x_start, x_end = _box_in_tile(box, g, ty0, tx0, rows, cols)
            for py in range(y_start, y_end):
                for px in range(x_start, x_end):
                    alpha, _, _, _, t_here = _visit(mx, my, ca, cb, cc, opacity, cut, px, py,
                                                    t, stopped, py - ty0, px - tx0)
                    if alpha == 0.0:
                        continue
                    w = alpha * t_here
                    pix = (b * height + py) * width + px
                    for k in range(n_pay):
                        acc[pix, k] += w * pay[k]
    return acc


@numba.njit(parallel=True, cache=True)
def _backward(feat, payload, box, offsets, entries, n_img, height, width, tiles_x, tiles_y, acc, grad_acc):
    """Per list entry: dL/d(mx, my, a, b, c, opacity, payload channels but the last), summed over its
    tile's pixels; the same walk as `_forward`, the entry's sums kept in locals until its box is done."""
    n_pay = payload.shape[1]
    grads = np.zeros((entries.shape[0], 6 + n_pay - 1))
    per_img = tiles_x * tiles_y
    for tile in numba.prange(n_img * per_img):
        b, ty0, tx0, rows, cols = _tile_window(tile, per_img, tiles_x, height, width)
        t = np.ones((rows, cols))
        stopped = np.zeros((rows, cols), np.bool_)
        prefix = np.zeros((rows, cols))
        total = np.zeros((rows, cols))
        pay = np.empty(n_pay)
        g_pay = np.empty(n_pay)
        for r in range(rows):
            for c in range(cols):
                pix = (b * height + ty0 + r) * width + tx0 + c
                for k in range(n_pay):
                    total[r, c] += grad_acc[pix, k] * acc[pix, k]
        for e in range(offsets[tile], offsets[tile + 1]):
            g = entries[e]
            mx, my, ca, cb, cc, opacity = feat[g, 0], feat[g, 1], feat[g, 2], feat[g, 3], feat[g, 4], feat[g, 5]
            cut = _cut(opacity)
            for k in range(n_pay):
                pay[k] = payload[g, k]
                g_pay[k] = 0.0
            g_mx = g_my = g_a = g_b = g_c = g_o = 0.0
            y_start, y_end, x_start, x_end = _box_in_tile(box, g, ty0, tx0, rows, cols)
            for py in range(y_start, y_end):
                for px in range(x_start, x_end):
                    r, c = py - ty0, px - tx0
                    alpha, falloff, dx, dy, t_here = _visit(mx, my, ca, cb, cc, opacity, cut, px, py,
                                                            t, stopped, r, c)
                    if alpha == 0.0:
                        continue
                    pix = (b * height + py) * width + px
                    w = alpha * t_here
                    gf = 0.0
                    for k in range(n_pay):
                        gf += grad_acc[pix, k] * pay[k]
                    prefix[r, c] += w * gf
                    d_alpha = t_here * gf - (total[r, c] - prefix[r, c]) / (1.0 - alpha)
                    for k in range(n_pay - 1):
                        g_pay[k] += w * grad_acc[pix, k]
                    if opacity * falloff <= MAX_ALPHA:  # below the clamp: alpha = o e^-power
                        g_o += d_alpha * falloff
                        d_power = -d_alpha * alpha
                        g_mx -= d_power * (ca * dx + cb * dy)
                        g_my -= d_power * (cc * dy + cb * dx)
                        g_a += d_power * 0.5 * dx * dx
                        g_b += d_power * dx * dy
                        g_c += d_power * 0.5 * dy * dy
            grads[e, 0], grads[e, 1], grads[e, 2] = g_mx, g_my, g_a
            grads[e, 3], grads[e, 4], grads[e, 5] = g_b, g_c, g_o
            for k in range(n_pay - 1):
                grads[e, 6 + k] = g_pay[k]
    return grads


@numba.njit(cache=True)
def _sum_per_gaussian(entry_grads, entries, n_total):
    out = np.zeros((n_total, entry_grads.shape[1]))
    for e in range(entries.shape[0]):
        g = entries[e]
        for k in range(entry_grads.shape[1]):
            out[g, k] += entry_grads[e, k]
    return out


class _Composite(torch.autograd.Function):
    """(means2d (B, N, 2), conics (B, N, 3), opacities (B, N), payload (B, N, P)) → acc (B, H, W, P)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, payload, lists, width, height):
        n_img = opacities.shape[0]
        feat = torch.cat([means2d.reshape(-1, 2), conics.reshape(-1, 3), opacities.reshape(-1, 1)], 1)
        feat = feat.detach().double().numpy()
        pay = payload.detach().reshape(-1, payload.shape[-1]).double().numpy()
        box, offsets, entries, tiles_x, tiles_y = lists
        acc = launch(_forward, feat, pay, box, offsets, entries, n_img, height, width, tiles_x, tiles_y)
        ctx.kernel_args = (feat, pay, box, offsets, entries, n_img, height, width, tiles_x, tiles_y, acc)
        ctx.dtypes = (means2d.dtype, payload.dtype)
        ctx.shapes = (means2d.shape[:2], payload.shape)
        return torch.from_numpy(acc).to(payload.dtype).reshape(n_img, height, width, -1)

    @staticmethod
    def backward(ctx, grad_acc):
        *args, acc = ctx.kernel_args
        grad = np.ascontiguousarray(grad_acc.detach().reshape(acc.shape).double().numpy())
        entries = args[4]
        per_entry = launch(_backward, *args, acc, grad)
        per_gaussian = torch.from_numpy(_sum_per_gaussian(per_entry, entries, args[0].shape[0]))
        (b, n), pay_shape = ctx.shapes
        geo_dtype, pay_dtype = ctx.dtypes
        g_means = per_gaussian[:, 0:2].reshape(b, n, 2).to(geo_dtype)
        g_conics = per_gaussian[:, 2:5].reshape(b, n, 3).to(geo_dtype)
        g_opac = per_gaussian[:, 5].reshape(b, n).to(geo_dtype)
        g_pay = torch.zeros(b * n, pay_shape[-1], dtype=torch.float64)
        g_pay[:, :-1] = per_gaussian[:, 6:]
        return g_means, g_conics, g_opac, g_pay.reshape(pay_shape).to(pay_dtype), None, None, None


def composite(
    proj: Projected, colors: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render B images on CPU: (image (B, H, W, C), expected depth (B, H, W) metres, alpha (B, H, W))."""
    if proj.means2d.device.type != "cpu":
        raise ValueError(f"composite_numba needs CPU tensors, got {proj.means2d.device}; use composite_torch or gsplat")
    n_img, n = proj.opacities.shape
    with torch.no_grad():
        x0, x1, y0, y1, visible = boxes(proj, width, height)
        box = torch.stack([x0, x1, y0, y1], 1).numpy()
        # Each image's Gaussians front to back (ties keep Gaussian order, as gsplat and composite_torch).
        order = (torch.argsort(proj.depths.detach(), dim=1, stable=True)
                 + torch.arange(n_img)[:, None] * n).reshape(-1).numpy()
        tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
        offsets, entries = _tile_lists(order, box, visible.numpy(), n_img, n, tiles_x, tiles_y)
    payload = torch.cat([colors[None].expand(n_img, -1, -1), proj.depths[..., None],
                         torch.ones_like(proj.depths)[..., None]], dim=-1)
    acc = _Composite.apply(proj.means2d, proj.conics, proj.opacities, payload,
                           (box, offsets, entries, tiles_x, tiles_y), width, height)
    alpha = acc[..., -1]
    depth = acc[..., -2] / alpha.clamp_min(1e-10)
    return acc[..., :-2], depth, alpha
