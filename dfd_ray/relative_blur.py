"""Classical depth from defocus of a focal stack with a known lens: the relative blur of slice pairs.

For a candidate depth d every slice i has its thin-lens CoC c_i(d) (docs/design.md §2), so of two
slices the sharper one, blurred by a Gaussian of the variance difference (c_j² − c_i²) / 16 (a
disc of diameter c has variance c² / 16), should look like the blurrier one. Per pixel the cost
of d is that mismatch over every pair, in linear light, averaged over a small window and divided
by the local energy of the two slices' fine detail (so every pair and every texture weighs alike);
the depth is the candidate of least cost, refined by a parabola through its neighbours on a grid
uniform in inverse depth. It knows the lens, which depth from focus ignores, and its errors are
largely independent of depth from focus's (the two are combined into the training teachers,
`dfd_ray.teachers`).
"""

from __future__ import annotations

import numpy as np
import torch

from dfd_ray import optics
from dfd_ray.imaging import srgb_to_linear
from dfd_ray.filters import gaussian_blur


@torch.no_grad()
def depth_from_relative_blur(images: np.ndarray, focus_distances: np.ndarray, lens: optics.Lens,
                             depth_range: tuple[float, float] | None = None, bins: int = 96,
                             window_px: float = 1.5, sigma_step_px: float = 0.1) -> np.ndarray:
    """Depth (H, W) in metres from a focal stack (S, H, W, C) of sRGB in [0, 1] and its lens.

    `depth_range` defaults to half the nearest to twice the farthest focus distance (as the splat
    fit's); `bins` candidates uniform in inverse depth; Gaussian levels every `sigma_step_px`,
    interpolated between.
    """
    focus = np.asarray(focus_distances, np.float64)
    lo, hi = depth_range or (0.5 * focus.min(), 2.0 * focus.max())
    grey = torch.from_numpy(srgb_to_linear(np.ascontiguousarray(images, np.float32))).mean(-1)[:, None]  # (S, 1, H, W)
    u = np.linspace(1.0 / lo, 1.0 / hi, bins)
    variance = torch.from_numpy(np.stack([lens.coc_px(1.0 / u, s) ** 2 / 16
                                          for s in focus])).float()  # (S, bins) px²
    max_sigma = float(variance.max().sqrt()) + sigma_step_px
    sigmas = np.arange(0.0, max_sigma + sigma_step_px, sigma_step_px)
    bank = torch.stack([gaussian_blur(grey, float(sg)) for sg in sigmas])  # (L, S, 1, H, W)
    cost = torch.zeros(bins, *grey.shape[-2:])
    n = grey.shape[0]
    # Each pair's mismatch is divided by the local energy of the two slices' fine detail, so that
    # every pair and every texture weighs alike (not by the pair's own difference, which vanishes
    # where both slices blur alike and would let that pair's noise dominate).
    detail = gaussian_blur((grey - gaussian_blur(grey, 1.0)) ** 2, window_px)[:, 0]  # (S, H, W)
    scale = detail[:, None] + detail[None, :] + 1e-6
    for i in range(n):
        for j in range(i + 1, n):
            dv = variance[j] - variance[i]  # > 0: slice i is the sharper one at that depth
            sharper = torch.where(dv > 0, i, j)
            blurrier = torch.where(dv > 0, j, i)
            level = dv.abs().sqrt() / sigma_step_px
            l0 = level.floor().long().clamp(max=len(sigmas) - 2)
            t = (level - l0).clamp(0, 1)[:, None, None]
            matched = (1 - t) * bank[l0, sharper, 0] + t * bank[l0 + 1, sharper, 0]  # (bins, H, W)
            mismatch = gaussian_blur(((matched - grey[blurrier, 0]) ** 2)[:, None], window_px)[:, 0]
            cost += mismatch / scale[i, j]
    k = cost.argmin(0)
    inner = k.clamp(1, bins - 2)
    c0, c1, c2 = (cost.gather(0, (inner + o)[None])[0] for o in (-1, 0, 1))
    curvature = c0 - 2 * c1 + c2
    offset = torch.where(curvature > 1e-9, 0.5 * (c0 - c2) / curvature.clamp_min(1e-9), torch.zeros_like(c1)).clamp(-1, 1)
    grid = torch.from_numpy(u).float()
    inverse = torch.where((k == 0) | (k == bins - 1), grid[k], grid[inner] + offset * (grid[1] - grid[0]))
    return (1.0 / inverse).numpy().astype(np.float32)
