"""Sparse front-to-back alpha compositing in plain PyTorch: the CPU backend (runs on any device).

Follows gsplat's per-pixel rules (docs/design.md §3): pixel centres at +0.5; alpha = min(0.999,
opacity · exp(-q/2)); pairs with alpha < 1/255 are skipped; a pixel stops at the Gaussian that
would take its transmittance to 1e-4 or below (that Gaussian is not added). Formulation: one row
per (pixel, Gaussian) pair inside each splat's alpha = 1/255 ellipse, sorted by pixel then depth;
transmittance is the exponential of a per-pixel exclusive cumulative sum of log(1 - alpha), in
float64 because the running sum spans every pixel of the image.
"""

from __future__ import annotations

import torch

from dfd_ray.splat.project import ALPHA_THRESHOLD, Projected

MAX_ALPHA = 0.999
T_MIN = 1e-4


SPAN_MARGIN = 1e-3  # pixels: each row's exact span is widened by this much against rounding


def _segments(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """counts[i] entries for every i, in order: (i of each entry, its position 0..counts[i]-1)."""
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    return owner, torch.arange(len(owner), device=owner.device) - (torch.cumsum(counts, 0) - counts)[owner]


def boxes(proj: Projected, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """Each Gaussian's pixel box, flat over B·N: (x0, x1, y0, y1) inclusive pixel indices inside the
    image, and whether it can touch any pixel (opacity >= 1/255, a non-empty box). The box holds
    every pixel centre within its radii (`project`); no pixel outside it is composited."""
    with torch.no_grad():
        mx, my = proj.means2d[..., 0].reshape(-1), proj.means2d[..., 1].reshape(-1)
        rx, ry = proj.radii[..., 0].reshape(-1), proj.radii[..., 1].reshape(-1)
        x0 = torch.ceil(mx - rx - 0.5).clamp(0, width).long()
        x1 = torch.floor(mx + rx - 0.5).clamp(-1, width - 1).long()
        y0 = torch.ceil(my - ry - 0.5).clamp(0, height).long()
        y1 = torch.floor(my + ry - 0.5).clamp(-1, height - 1).long()
        visible = (proj.opacities.reshape(-1) >= ALPHA_THRESHOLD) & (rx > 0) & (ry > 0) & (x1 >= x0) & (y1 >= y0)
        return x0, x1, y0, y1, visible


def _pairs(proj: Projected, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """Every pixel centre where a Gaussian's alpha may reach 1/255, image by image: (flat Gaussian
    index into B·N, flat pixel index into B·H·W, pixel column, pixel row).

    Row by row of each splat's box, only the span inside its alpha = 1/255 ellipse (solved from
    the conic, widened by SPAN_MARGIN) is listed: about half the box of a round splat. The exact
    per-pair test in `composite` decides; a pair outside the ellipse would fail it anyway."""
    with torch.no_grad():
        n_img, n = proj.opacities.shape
        mx, my = proj.means2d[..., 0].reshape(-1), proj.means2d[..., 1].reshape(-1)
        opacity = proj.opacities.reshape(-1)
        x0, x1, y0, y1, visible = boxes(proj, width, height)
        ny = (y1 - y0 + 1).clamp_min(0)
        rows = torch.where(visible, ny, torch.zeros_like(ny))
        g_row, row_in_box = _segments(rows)
        py_row = y0[g_row] + row_in_box
        # On row y the ellipse 0.5 a dx² + b dx dy + 0.5 c dy² <= ln(255 opacity) spans the roots in dx.
        a, b, c = (proj.conics.reshape(-1, 3)[g_row, k].double() for k in range(3))
        dy = py_row.double() + 0.5 - my[g_row].double()
        level = torch.log(opacity[g_row].double() / ALPHA_THRESHOLD)
        disc = (b * dy) ** 2 - a * (c * dy * dy - 2 * level)
        root = torch.sqrt(disc.clamp_min(0))
        centre = mx[g_row].double() - 0.5 - b * dy / a
        xs = torch.maximum(torch.ceil(centre - root / a - SPAN_MARGIN).long(), x0[g_row])
        xe = torch.minimum(torch.floor(centre + root / a + SPAN_MARGIN).long(), x1[g_row])
        counts = torch.where(disc >= 0, (xe - xs + 1).clamp_min(0), torch.zeros_like(xs))
        row, x_in_span = _segments(counts)
        px = xs[row] + x_in_span
        gid, py = g_row[row], py_row[row]
        image = torch.div(gid, n, rounding_mode="floor")
        return gid, (image * height + py) * width + px, px, py


def _alpha(features: torch.Tensor, centre_x: torch.Tensor, centre_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(power, alpha) of each pair from its Gaussian's packed features (mx, my, a, b, c, o, z)
    and its pixel centre (pixels)."""
    mx, my, a, b, c, opacity = features[:, :6].unbind(-1)
    dx = centre_x - mx
    dy = centre_y - my
    power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    return power, torch.clamp_max(opacity * torch.exp(-power), MAX_ALPHA)


def composite(
    proj: Projected, colors: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render B images: (image (B, H, W, C), expected depth (B, H, W) metres, alpha (B, H, W)).

    `colors` (N, C) may carry any channels; depth is composited alongside them.
    """
    n_img, n = proj.opacities.shape
    features = torch.cat(
        [proj.means2d.reshape(-1, 2), proj.conics.reshape(-1, 3),
         proj.opacities.reshape(-1, 1), proj.depths.reshape(-1, 1)], dim=1
    )
    with torch.no_grad():
        # Choose and order the pairs without autograd; only the survivors are evaluated with it.
        gid, pix, px, py = _pairs(proj, width, height)
        centre_x, centre_y = px.to(features.dtype) + 0.5, py.to(features.dtype) + 0.5
        power, alpha = _alpha(features.detach().index_select(0, gid), centre_x, centre_y)
        keep = (alpha >= ALPHA_THRESHOLD) & (power >= 0)
        gid, pix, centre_x, centre_y = gid[keep], pix[keep], centre_x[keep], centre_y[keep]
        # Sort by pixel, then front to back within the pixel (ties keep Gaussian order, as gsplat).
        depths = features[:, 6].detach()
        rank = torch.empty_like(depths, dtype=torch.long)
        rank[torch.argsort(depths, stable=True)] = torch.arange(len(rank), device=rank.device)
        order = torch.argsort(pix * len(rank) + rank[gid], stable=True)
        gid, pix, centre_x, centre_y = gid[order], pix[order], centre_x[order], centre_y[order]
        _, seg_len = torch.unique_consecutive(pix, return_counts=True)
        seg_first = torch.cumsum(seg_len, 0) - seg_len
    # index_select's backward is an index_add, much cheaper on CPU than advanced indexing's.
    pair_features = features.index_select(0, gid)
    _, alpha = _alpha(pair_features, centre_x, centre_y)
    log_t = torch.log1p(-alpha.double())
    inclusive = torch.cumsum(log_t, 0)
    base = torch.repeat_interleave((inclusive - log_t)[seg_first], seg_len)
    t_before = torch.exp(inclusive - log_t - base)
    t_after = torch.exp(inclusive - base)
    weight = (alpha.double() * t_before * (t_after > T_MIN)).to(alpha.dtype)

    payload = torch.cat(
        [colors.index_select(0, gid % n), pair_features[:, 6:7], torch.ones_like(weight)[:, None]], dim=1
    )
    acc = torch.zeros(n_img * width * height, payload.shape[1], dtype=payload.dtype, device=payload.device)
    acc = acc.index_add(0, pix, weight[:, None] * payload).reshape(n_img, height, width, -1)
    alpha_px = acc[..., -1]
    depth = acc[..., -2] / alpha_px.clamp_min(1e-10)
    return acc[..., :-2], depth, alpha_px
