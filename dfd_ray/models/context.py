"""Context for pixels that show no blur: a photo's CoC readings shared along its colour regions.

Where a surface shows no detail (flat paint, smooth shading), and in the bands around occlusions
where the blur mixes two surfaces, SDNet cannot read the pixel's own blur and says so with a wide
error scale b; the surface's textured parts, of the same colour and at the same depth, can. At decode each pixel's CoC becomes the precision-weighted mean of its own
reading and its neighbours' (docs/design.md §8, "Context at decode"):

    w_ij = g(|x_i - x_j|; sigma_px) · exp(-|I_i - I_j|² / (2 colour_sigma²)) / b_j²    (j ≠ i)
    n_i  = Σ_j w_ij c_j / Σ_j w_ij                       the colour-alike neighbours' reading
    q_i  = strength · Σ_j w_ij / Σ_j g(|x_i - x_j|)      its precision, 1/px²
    c'_i = (c_i / b_i² + q_i n_i) / (1 / b_i² + q_i)

g is a Gaussian of the image-plane distance, I the photo's sRGB colour. The colour term stops the
sharing at the colour edges that bound a surface (a joint bilateral filter, the photo as the guide),
so an occlusion's two sides keep their own blur where their colours differ. A confident pixel (small
b) keeps its own reading; an uncertain one takes its colour-alike neighbours'. b itself is left as
it is: neighbours on one surface share their reading's errors. Neighbours are visited every
ceil(sigma_px / 4) px out to 2 sigma_px (17 × 17 offsets whatever the sigma); pixels outside the
photo weigh nothing, so a pixel's output depends on the photo within 2 sigma_px of it (tiles need
that much more overlap).

Two backends with the same values: torch (any device; the reference) and, on CPU, a numba kernel
that walks each pixel's offsets in registers, in float32 (the torch path makes about ten passes
over the photo per offset; float64 arithmetic made the kernel 1.4x slower, docs/benchmarks.md).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F

from dfd_ray.numba_threads import launch


def window(sigma_px: float) -> tuple[int, int]:
    """(radius, step) in pixels of the offsets visited for a spatial sigma: the radius 2 sigma
    rounded down to a multiple of the step ceil(sigma / 4)."""
    step = max(1, math.ceil(sigma_px / 4))
    return int(2 * sigma_px) // step * step, step


def _offsets(sigma_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx) int64 and spatial weight g float32 of every neighbour offset visited, the pixel's own left out."""
    radius, step = window(sigma_px)
    dys, dxs = (a.ravel() for a in np.mgrid[-radius:radius + 1:step, -radius:radius + 1:step])
    keep = (dys != 0) | (dxs != 0)
    dys, dxs = dys[keep].astype(np.int64), dxs[keep].astype(np.int64)
    return dys, dxs, np.exp(-(dys**2 + dxs**2) / (2.0 * sigma_px**2)).astype(np.float32)


def share_coc(coc: torch.Tensor, scale: torch.Tensor, image: torch.Tensor, sigma_px: float,
              colour_sigma: float, strength: float, backend: str = "auto") -> torch.Tensor:
    """CoC (N, H, W) px, its error scale b (N, H, W) px and the photos (N, 3, H, W) sRGB in [0, 1] →
    the CoC (N, H, W) px with each pixel's reading shared with its colour-alike neighbours (the
    module's formula). sigma_px 0: the CoC unchanged. Not differentiated (eval and inference only).
    backend "auto": numba for CPU tensors, else torch."""
    if backend == "auto":
        backend = "numba" if coc.device.type == "cpu" else "torch"
    if backend not in ("torch", "numba"):
        raise ValueError(f"backend must be auto, torch or numba, got {backend!r}")
    if window(sigma_px)[0] == 0:
        return coc
    offsets = _offsets(sigma_px)
    with torch.no_grad():
        if backend == "numba":
            out = np.empty(coc.shape, np.float32)
            launch(_share_kernel, _array(coc), _array(1.0 / scale**2), _array(image.permute(0, 2, 3, 1)),
                   *offsets, np.float32(0.5 / colour_sigma**2), np.float32(strength), out)
            return torch.from_numpy(out)
        return _share_torch(coc, scale, image, offsets, colour_sigma, strength)


def _array(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().numpy())


@numba.njit(parallel=True, cache=True)
def _share_kernel(coc, precision, image, dys, dxs, spatials, inv_two_colour_var, strength, out):
    n_img, h, w = coc.shape
    # Beyond this colour distance a neighbour's weight is below e^-30 of a like one's: skipped.
    max_colour = np.float32(30.0) / inv_two_colour_var
    for row in numba.prange(n_img * h):
        n, y = row // h, row % h
        for x in range(w):
            r, g, b = image[n, y, x, 0], image[n, y, x, 1], image[n, y, x, 2]
            weight_sum, coc_sum, spatial_sum = np.float32(0), np.float32(0), np.float32(0)
            for o in range(dys.shape[0]):
                yy, xx = y + dys[o], x + dxs[o]
                if yy < 0 or yy >= h or xx < 0 or xx >= w:
                    continue
                spatial_sum += spatials[o]
                dr, dg, db = image[n, yy, xx, 0] - r, image[n, yy, xx, 1] - g, image[n, yy, xx, 2] - b
                colour = dr * dr + dg * dg + db * db
                if colour > max_colour:
                    continue
                weight = spatials[o] * math.exp(-colour * inv_two_colour_var) * precision[n, yy, xx]
                weight_sum += weight
                coc_sum += weight * coc[n, yy, xx]
            own = precision[n, y, x]
            shared_precision = strength * weight_sum / max(spatial_sum, 1e-30)
            shared_coc = coc_sum / max(weight_sum, 1e-30)
            out[n, y, x] = (own * coc[n, y, x] + shared_precision * shared_coc) / (own + shared_precision)


def _share_torch(coc: torch.Tensor, scale: torch.Tensor, image: torch.Tensor,
                 offsets: tuple[np.ndarray, np.ndarray, np.ndarray], colour_sigma: float,
                 strength: float) -> torch.Tensor:
    n, h, w = coc.shape
    dys, dxs, spatials = offsets
    radius = int(np.abs(dys).max())
    precision = 1.0 / scale**2
    pad = (radius,) * 4
    guide = F.pad(image, pad, mode="replicate")
    # Outside the photo: zero precision and zero spatial mass, so a border pixel's neighbours are
    # only those the photo has.
    neighbour_precision = F.pad(precision[:, None], pad)[:, 0]
    neighbour_coc = F.pad(coc[:, None], pad, mode="replicate")[:, 0]
    inside = F.pad(torch.ones_like(coc)[:, None], pad)[:, 0]
    weight_sum = torch.zeros_like(coc)
    coc_sum = torch.zeros_like(coc)
    spatial_sum = torch.zeros_like(coc)
    for dy, dx, spatial in zip(dys.tolist(), dxs.tolist(), spatials.tolist()):
        rows, cols = slice(radius + dy, radius + dy + h), slice(radius + dx, radius + dx + w)
        colour = ((guide[:, :, rows, cols] - image) ** 2).sum(1)
        weight = spatial * torch.exp(colour * (-0.5 / colour_sigma**2)) * neighbour_precision[:, rows, cols]
        weight_sum += weight
        coc_sum += weight * neighbour_coc[:, rows, cols]
        spatial_sum += spatial * inside[:, rows, cols]
    shared_precision = strength * weight_sum / spatial_sum.clamp_min(1e-30)
    shared_coc = coc_sum / weight_sum.clamp_min(1e-30)
    return (precision * coc + shared_precision * shared_coc) / (precision + shared_precision)
