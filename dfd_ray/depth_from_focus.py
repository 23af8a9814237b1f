"""Classical depth from focus: the baseline every learned or fitted depth must beat.

Per slice a focus measure (the energy of the Laplacian, averaged over a window); per pixel the
slice where it peaks, refined to a sub-slice position by Gaussian interpolation (a parabola
through the logarithm of the measure at the peak and its neighbours). The refinement is done in inverse focus distance (dioptres), where the CoC is
linear (docs/design.md §2), and mapped back to metres.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def focus_measure(images: np.ndarray, window: int = 7) -> np.ndarray:
    """Windowed Laplacian energy per slice: images (S, H, W, C) in [0, 1] → (S, H, W)."""
    grey = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).mean(-1, keepdim=True)
    grey = grey.permute(0, 3, 1, 2)
    lap = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), LAPLACIAN[None, None])
    pad = window // 2
    energy = F.avg_pool2d(F.pad(lap**2, (pad, pad, pad, pad), mode="replicate"), window, stride=1)
    return energy[:, 0].numpy()


def depth_from_focus(
    images: np.ndarray, focus_distances: np.ndarray, window: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W) metres, confidence (H, W) in [0, 1]) from a focal stack (S, H, W, C) in [0, 1].

    Depth never leaves the range of the focus distances: focus alone cannot say more. The
    confidence is how far the peak stands above the mean focus measure of the other slices.
    """
    distances = np.asarray(focus_distances, np.float64)
    order = np.argsort(-distances)  # ascending dioptres
    dioptres = 1.0 / distances[order]
    measure = focus_measure(images[order], window).astype(np.float64)  # (S, H, W)
    s = len(dioptres)
    peak = measure.argmax(0)
    vertex = dioptres[peak]
    if s >= 3:
        k = np.clip(peak, 1, s - 2)
        rows, cols = np.indices(peak.shape)
        x0, x1, x2 = dioptres[k - 1], dioptres[k], dioptres[k + 1]
        # The focus measure falls off like a Gaussian around the peak (Nayar's Gaussian
        # interpolation): a parabola through its logarithm finds the peak's centre.
        log_m = np.log(measure + 1e-12)
        y0, y1, y2 = log_m[k - 1, rows, cols], log_m[k, rows, cols], log_m[k + 1, rows, cols]
        # Vertex of the parabola through three unevenly spaced points.
        num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
        den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
        with np.errstate(divide="ignore", invalid="ignore"):
            fitted = x1 - 0.5 * num / den
        fitted = np.where(np.isfinite(fitted), fitted, vertex)
        # Stay within half a slice of the peak: beyond it another slice would have peaked.
        lo = np.where(peak > 0, (dioptres[np.maximum(peak - 1, 0)] + vertex) / 2, vertex)
        hi = np.where(peak < s - 1, (dioptres[np.minimum(peak + 1, s - 1)] + vertex) / 2, vertex)
        vertex = np.clip(fitted, lo, hi)
    best = measure.max(0)
    others = (measure.sum(0) - best) / max(s - 1, 1)
    confidence = 1.0 - others / np.maximum(best, 1e-12)
    return (1.0 / vertex).astype(np.float32), confidence.astype(np.float32)
