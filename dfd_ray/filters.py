"""Image filters shared by the networks and the classical stack methods, in plain PyTorch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), radius ceil(3σ), replicate padding; σ <= 0 returns x."""
    if sigma_px <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma_px))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def local_variance(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Per-pixel variance of (N, C, H, W) in a Gaussian window of σ `sigma_px`: the local contrast
    that tells where an image has detail for blur to act on."""
    return gaussian_blur((x - gaussian_blur(x, sigma_px)) ** 2, sigma_px).clamp_min(0)
