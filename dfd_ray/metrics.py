"""Depth metrics (docs/design.md §6), per image over valid ground-truth pixels, then averaged over images.

Valid: GT > 0 (0 marks invalid) and, when `max_depth` is given, GT <= max_depth (FoD500 practice
clips at 1.5 m). Predictions are clamped to a small positive floor so logs stay finite.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dfd_ray import optics

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "mae", "mse", "delta1", "delta2", "delta3")
COC_KEYS = ("coc_mae_px", "gt_coc_mean_px")
SIDE_KEYS = ("abs_rel_true_side", "abs_rel_true_coc", "wrong_side")
FOD500_MAX_DEPTH_M = 1.5  # the FoD500 practice: GT beyond is not scored


def valid_mask(gt: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    mask = np.isfinite(gt) & (gt > 0)
    if max_depth is not None:
        mask &= gt <= max_depth
    return mask


def depth_metrics(pred: np.ndarray, gt: np.ndarray, max_depth: float | None = None) -> dict[str, float]:
    """All METRIC_KEYS for one image (metres); NaN for every key when no pixel is valid."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    mask = valid_mask(gt, max_depth)
    if not mask.any():
        return {k: float("nan") for k in METRIC_KEYS}
    d = np.maximum(pred[mask].astype(np.float64), 1e-6)
    g = gt[mask].astype(np.float64)
    err = d - g
    ratio = np.maximum(d / g, g / d)
    return {
        "abs_rel": float(np.mean(np.abs(err) / g)),
        "sq_rel": float(np.mean(err**2 / g)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(d) - np.log(g)) ** 2))),
        "mae": float(np.mean(np.abs(err))),
        "mse": float(np.mean(err**2)),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


def coc_metrics(pred_coc_px: np.ndarray, gt_coc_px: np.ndarray, gt_depth: np.ndarray,
                max_depth: float | None = None) -> dict[str, float]:
    """Defocus-map error of one slice over the valid GT-depth pixels: mean |pred - GT| CoC and the
    mean GT CoC beside it for scale (pixels); NaN for both when no pixel is valid.

    The GT CoC comes from the GT depth through the thin lens (`optics.coc_px`). It separates the
    two halves of single-image depth: how well SDNet reads blur, and what DepthNet makes of it.
    """
    if pred_coc_px.shape != gt_depth.shape or gt_coc_px.shape != gt_depth.shape:
        raise ValueError(f"CoC maps {pred_coc_px.shape}, {gt_coc_px.shape} and GT depth {gt_depth.shape} differ in shape")
    mask = valid_mask(gt_depth, max_depth)
    if not mask.any():
        return {k: float("nan") for k in COC_KEYS}
    g = gt_coc_px[mask].astype(np.float64)
    return {"coc_mae_px": float(np.mean(np.abs(pred_coc_px[mask] - g))), "gt_coc_mean_px": float(np.mean(g))}


def side_metrics(pred_depth: np.ndarray, pred_coc_px: np.ndarray, gt_depth: np.ndarray, focus_distance: float,
                 gain_px_m: float, depth_range: tuple[float, float], max_depth: float | None = None,
                 min_coc_px: float = 1.0) -> dict[str, float]:
    """Where one slice's single-image depth error comes from: the blur or its side.

    A CoC c has two depths, one on each side of the focus plane s: 1/d = 1/s ± c/G (G in pixel
    metres, `optics.coc_gain_px`). Over the valid GT pixels:
    - `abs_rel_true_side`: AbsRel of the thin-lens inverse of the predicted CoC taken on the GT side,
      the error left if the side were known;
    - `abs_rel_true_coc`: AbsRel of the GT CoC taken on the side of the predicted depth, the error
      left if the blur were read exactly;
    - `wrong_side`: the fraction of the pixels with GT CoC >= `min_coc_px` (where the two candidate
      depths are apart) whose predicted depth lies on the other side of s; NaN where there is none.
    Both inverses are clipped to `depth_range` (metres), the range the model predicts in.
    """
    if not pred_depth.shape == pred_coc_px.shape == gt_depth.shape:
        raise ValueError(f"depth {pred_depth.shape}, CoC {pred_coc_px.shape} and GT depth {gt_depth.shape} "
                         "differ in shape")
    mask = valid_mask(gt_depth, max_depth)
    if not mask.any():
        return {k: float("nan") for k in SIDE_KEYS}
    g = gt_depth[mask].astype(np.float64)
    pred_side = np.sign(1.0 / np.maximum(pred_depth[mask].astype(np.float64), 1e-6) - 1.0 / focus_distance)
    gt_side = np.sign(1.0 / g - 1.0 / focus_distance)
    gt_coc = optics.coc_px_at_inverse_depth(1.0 / g, focus_distance, gain_px_m)
    lo, hi = depth_range

    def inverse(side: np.ndarray, coc: np.ndarray) -> np.ndarray:
        return 1.0 / np.clip(optics.inverse_depth_at_coc_px(coc, side, focus_distance, gain_px_m), 1.0 / hi, 1.0 / lo)

    apart = gt_coc >= min_coc_px
    return {
        "abs_rel_true_side": float(np.mean(np.abs(inverse(gt_side, pred_coc_px[mask]) - g) / g)),
        "abs_rel_true_coc": float(np.mean(np.abs(inverse(pred_side, gt_coc) - g) / g)),
        "wrong_side": float(np.mean(pred_side[apart] != gt_side[apart])) if apart.any() else float("nan"),
    }


def mean_metrics(per_image: Iterable[dict[str, float]], keys: tuple[str, ...] = METRIC_KEYS) -> dict[str, float]:
    """Average per-image metrics (`depth_metrics`, or `coc_metrics` / `side_metrics` with their keys),
    skipping images without valid pixels (NaN in keys[0]); a key NaN in some images only (`wrong_side`)
    is averaged over the others."""
    rows = [m for m in per_image if not np.isnan(m[keys[0]])]
    if not rows:
        return {k: float("nan") for k in keys} | {"images": 0}

    def mean(k: str) -> float:
        values = [m[k] for m in rows if not np.isnan(m[k])]
        return float(np.mean(values)) if values else float("nan")

    return {k: mean(k) for k in keys} | {"images": len(rows)}


def best_constant(depths: Iterable[np.ndarray], max_depth: float | None = None) -> tuple[float, int]:
    """The constant depth c minimising mean |d - c| / d over the valid pixels of `depths` (metres),
    and the pixel count: the floor a depth model must clear (docs/design.md §6).

    sum_i |d_i - c| / d_i = sum_i w_i |d_i - c| with w_i = 1 / d_i is piecewise linear and convex in
    c; its minimum is the weighted median: the smallest sorted d_k whose cumulative weight reaches
    half the total.
    """
    d = np.sort(np.concatenate([g[valid_mask(g, max_depth)].astype(np.float64).ravel() for g in depths]))
    if d.size == 0:
        raise ValueError("no valid GT pixel to take the best constant depth over")
    cum = np.cumsum(1.0 / d)
    return float(d[int(np.searchsorted(cum, 0.5 * cum[-1], side="left"))]), int(d.size)
