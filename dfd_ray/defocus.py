"""Layered thin-lens image formation: disc PSFs per depth layer, composited back to front.

A scene is a list of surfaces ordered far to near. Each surface has linear-light colour and a
coverage alpha over the whole frame (also where nearer surfaces hide it, so occlusion edges can
blur over what lies behind) and an inverse depth per pixel. A surface is cut into thin slabs of
inverse depth, narrow enough that the CoC changes by at most `bin_px` pixels inside one; each
slab is blurred with the disc PSF of its CoC. Slabs of one surface add up (a surface does not
occlude itself); surfaces are alpha-composited far to near; dividing by the composited alpha
removes the darkening that a finite number of slabs and the frame border would otherwise leave.

CoC is linear in inverse depth for a fixed focus (c_px = G |1/d - 1/s|, docs/design.md §2), so slabs of
equal inverse-depth width have equal CoC widths.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dfd_ray import optics


@dataclass
class Surface:
    """color (H, W, 3) linear RGB; alpha (H, W) in [0, 1]; inv_depth (H, W) in 1/metres."""

    color: np.ndarray
    alpha: np.ndarray
    inv_depth: np.ndarray


def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel: interpolates exactly up to quadratics."""
    t = np.abs(t)
    return np.where(
        t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
    )


def disc_kernel(diameter_px: float, oversample: int = 16) -> np.ndarray:
    """Normalised uniform-disc PSF of `diameter_px` for a pixel-sampled scene.

    The slice focused on a surface already shows its texture integrated over each pixel; every
    other slice shows that same pixel-integrated texture convolved with the disc (convolutions
    commute). Applying a continuous disc to sampled pixels needs an interpolant: the disc is
    sampled finely and each sample is spread onto the pixel grid with Keys' cubic kernel, which
    reproduces quadratics, so the PSF has exactly the disc's per-axis variance c²/16 at any size,
    changes smoothly with the diameter even below one pixel (where blur still carries depth,
    docs/design.md §2), and is a delta at diameter 0. (Bilinear spreading would add frac·(1-frac) of
    spurious variance as soon as c > 0.)
    """
    if diameter_px < 0 or not np.isfinite(diameter_px):
        raise ValueError(f"disc diameter must be a finite number >= 0 pixels, got {diameter_px}")
    # Scenes ask for thousands of nearly equal diameters; a thousandth of a pixel is below noise.
    return _disc_kernel(round(float(diameter_px), 3), oversample).copy()


@functools.lru_cache(maxsize=4096)
def _disc_kernel(diameter_px: float, oversample: int) -> np.ndarray:
    radius = diameter_px / 2.0
    half = int(np.ceil(radius)) + 2
    size = 2 * half + 1
    kernel = np.zeros((size, size), np.float64)
    if radius < 1e-6:
        kernel[half, half] = 1.0
        return kernel.astype(np.float32)
    n = max(16, int(np.ceil(2 * radius * oversample)))  # small discs need samples too
    t = (np.arange(n) + 0.5) / n * 2 * radius - radius
    xs, ys = np.meshgrid(t, t)
    inside = xs**2 + ys**2 <= radius**2
    xs, ys = xs[inside] + half, ys[inside] + half
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    for dy in (-1, 0, 1, 2):
        wy = _keys_cubic(ys - (y0 + dy))
        for dx in (-1, 0, 1, 2):
            np.add.at(kernel, (y0 + dy, x0 + dx), wy * _keys_cubic(xs - (x0 + dx)))
    return (kernel / kernel.sum()).astype(np.float32)


def render_focal_stack(
    surfaces: list[Surface],
    focus_distances: list[float] | np.ndarray,
    lens: optics.Lens,
    bin_px: float = 0.25,
) -> np.ndarray:
    """Render the surfaces (far to near) at each focus distance [m] through `lens`: (S, H, W, 3)
    linear float32."""
    distances = [float(s) for s in focus_distances]
    gains = [lens.gain_px(s) for s in distances]
    bin_width = bin_px / max(gains)  # inverse-depth width of one slab [1/m]

    planes: list[np.ndarray] = []  # premultiplied rgb + alpha, one (4, H, W) per slab
    slab_cocs: list[list[float]] = []
    owner: list[int] = []
    for index, surface in enumerate(surfaces):
        covered = surface.alpha > 0
        if not covered.any():
            continue
        inv = surface.inv_depth
        bins = np.floor(inv / bin_width).astype(np.int64)
        for b in np.unique(bins[covered]):
            mask = covered & (bins == b)
            alpha = np.where(mask, surface.alpha, 0.0).astype(np.float32)
            rep = float(inv[mask].mean())
            planes.append(np.concatenate([surface.color.transpose(2, 0, 1) * alpha, alpha[None]], 0))
            slab_cocs.append([optics.coc_px_at_inverse_depth(rep, s, g) for g, s in zip(gains, distances)])
            owner.append(index)
    if not planes:
        raise ValueError("scene has no visible surface (every alpha is 0)")

    kernels = [[disc_kernel(c) for c in cocs] for cocs in slab_cocs]
    ksize = max(k.shape[0] for row in kernels for k in row)
    n_slab, n_slice = len(planes), len(distances)
    weight = np.zeros((n_slice, n_slab, ksize, ksize), np.float32)
    for j, row in enumerate(kernels):
        for i, k in enumerate(row):
            off = (ksize - k.shape[0]) // 2
            weight[i, j, off : off + k.shape[0], off : off + k.shape[0]] = k
    x = torch.from_numpy(np.stack(planes))  # (slab, 4, H, W)
    with torch.no_grad():
        blurred = _blur_slabs(x, torch.from_numpy(weight))

    out = torch.zeros(n_slice, 4, *planes[0].shape[-2:])
    owners = torch.tensor(owner)
    for index in sorted(set(owner)):  # far to near
        layer = blurred[:, owners == index].sum(1)
        a = layer[:, 3:4].clamp(0, 1)
        out = layer + (1 - a) * out
    image = out[:, :3] / out[:, 3:4].clamp_min(1e-6)
    return image.permute(0, 2, 3, 1).clamp(0, 1).numpy()


FFT_MIN_KERNEL = 17  # pixels: from this kernel size on, FFT convolution beats direct


def _blur_slabs(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Blur slabs (slab, C, H, W) with per-(slice, slab) kernels (slice, slab, k, k) → (slice, slab, C, H, W).

    The frame is extended by replication because the scene goes on beyond the sensor's edge.
    Small kernels: one grouped convolution over every (slice, slab, channel). Large ones (a
    nyuv2 camera blurs by tens of pixels): FFT, slice by slice to bound memory.
    """
    n_slab, channels, h, w = x.shape
    n_slice, ksize = weight.shape[0], weight.shape[-1]
    pad = ksize // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    if ksize < FFT_MIN_KERNEL:
        flat = padded.reshape(1, n_slab * channels, *padded.shape[-2:]).repeat(1, n_slice, 1, 1)
        kernels = weight.unsqueeze(2).expand(-1, -1, channels, -1, -1).reshape(-1, 1, ksize, ksize)
        return F.conv2d(flat, kernels, groups=kernels.shape[0]).reshape(n_slice, n_slab, channels, h, w)
    size = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded, s=size)
    out = []
    for i in range(n_slice):
        # Circular convolution equals the linear one on the part of the padded frame that no
        # wrapped sample reaches: rows and columns k-1 onwards. Disc kernels are symmetric, so
        # convolution and the correlation of conv2d agree.
        product = spectrum * torch.fft.rfft2(weight[i], s=size)[:, None]
        full = torch.fft.irfft2(product, s=size)
        out.append(full[..., ksize - 1 : ksize - 1 + h, ksize - 1 : ksize - 1 + w])
    return torch.stack(out)

