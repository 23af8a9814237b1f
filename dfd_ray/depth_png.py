"""Depth maps as images: 16-bit PNG in millimetres (lossless to 1 mm) and colour previews."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MAX_MM = 65535  # depths beyond 65.535 m saturate; 0 stays "invalid"


def encode_depth_mm(depth_m: np.ndarray) -> bytes:
    """(H, W) metres → 16-bit grey PNG in millimetres; non-finite or negative → 0 (invalid)."""
    mm = np.where(np.isfinite(depth_m) & (depth_m > 0), np.round(depth_m * 1000.0), 0)
    buf = io.BytesIO()
    Image.fromarray(np.clip(mm, 0, MAX_MM).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def encode_preview(depth_m: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> bytes:
    """Colour-mapped (viridis, near = dark) PNG of a depth map, scaled in inverse depth."""
    from matplotlib import colormaps

    valid = np.isfinite(depth_m) & (depth_m > 0)
    inv = np.where(valid, 1.0 / np.where(valid, depth_m, 1.0), np.nan)
    lo = 1.0 / vmax if vmax else np.nanmin(inv) if valid.any() else 0.0
    hi = 1.0 / vmin if vmin else np.nanmax(inv) if valid.any() else 1.0
    t = np.clip((hi - inv) / max(hi - lo, 1e-12), 0, 1)
    rgb = (colormaps["viridis"](np.nan_to_num(t))[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
