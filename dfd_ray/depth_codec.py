"""The depth codecs: depth maps in and out of files.

Written: 16-bit grey PNGs in millimetres (lossless to 1 mm) and colour previews. Read: those PNGs,
`.npy` arrays in metres and float EXRs in metres. Every decoder returns (H, W) float32 metres with
0 = invalid (the dataset format's convention, docs/design.md §7) and raises a `DatasetError` naming
the file where the bytes are not a depth map.
"""

from __future__ import annotations

import io
import posixpath

import numpy as np
from PIL import Image

from dfd_ray.focalstack import DatasetError

UNIT_M = 1e-3  # a 16-bit depth PNG holds millimetres (the NYUv2 / Kinect convention)
MAX_MM = 65535  # depths beyond 65.535 m saturate; 0 stays "invalid"
EXTENSIONS = (".png", ".npy", ".exr")


def encode_depth_mm(depth_m: np.ndarray) -> bytes:
    """(H, W) metres → 16-bit grey PNG in millimetres; non-finite or negative → 0 (invalid)."""
    mm = np.where(np.isfinite(depth_m) & (depth_m > 0), np.round(depth_m / UNIT_M), 0)
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


def clean_depth(depth_m: np.ndarray) -> np.ndarray:
    """float32 metres with every non-finite or negative value set to 0 (the format's "invalid")."""
    depth = np.asarray(depth_m, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(depth) | (depth < 0)
    return np.where(bad, np.float32(0), depth).astype(np.float32)


def decode_png_depth(data: bytes, uri: str) -> np.ndarray:
    """Depth [m] from a 16-bit grey PNG in millimetres; 0 stays 0 (invalid)."""
    try:
        with Image.open(io.BytesIO(data)) as pil:
            pil.load()
            mode = pil.mode
            raw = np.asarray(pil)
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise DatasetError(f"{uri}: not a readable PNG: {exc}") from None
    # Pillow opens 16-bit grey PNGs as "I;16" (or "I" for some encoders); anything else is not
    # millimetre depth, and an 8-bit map would silently lose all but 255 mm of range.
    if mode not in ("I;16", "I;16B", "I;16L", "I") or raw.ndim != 2:
        raise DatasetError(f"{uri}: depth PNG must be 16-bit grey in millimetres, got Pillow mode {mode}")
    millimetres = raw.astype(np.float64)
    return clean_depth(millimetres * UNIT_M)


def decode_npy_depth(data: bytes, uri: str) -> np.ndarray:
    """Depth [m] from a .npy array of shape (H, W) or (H, W, 1)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise DatasetError(f"{uri}: not a readable .npy array: {exc}") from None
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.dtype.kind not in "fiu":
        raise DatasetError(
            f"{uri}: depth .npy must be a numeric (H, W) array in metres, got {array.dtype} {array.shape}"
        )
    return clean_depth(array.astype(np.float32))


def decode_exr_depth(data: bytes, uri: str) -> np.ndarray:
    """Depth [m] from an EXR: its R channel, or its only channel. float16 values are kept exactly."""
    import OpenEXR  # imported here: only EXR sources need the native library

    try:
        exr = OpenEXR.File(io.BytesIO(data), separate_channels=True)
        channels = exr.channels()
        if "R" in channels:
            name = "R"
        elif len(channels) == 1:
            name = next(iter(channels))
        else:
            raise DatasetError(f"{uri}: EXR has channels {sorted(channels)}; depth must be in R or the only channel")
        pixels = np.asarray(channels[name].pixels)
    except DatasetError:
        raise
    except Exception as exc:  # the OpenEXR binding raises RuntimeError and others for bad files
        raise DatasetError(f"{uri}: not a readable EXR file: {exc}") from None
    if pixels.ndim != 2 or pixels.dtype.kind != "f":
        raise DatasetError(
            f"{uri}: EXR channel {name} is {pixels.dtype} {pixels.shape}, expected a float H×W depth map"
        )
    # float16 -> float32 widening is exact, so the stored depth equals the file's values.
    return clean_depth(pixels.astype(np.float32))


def decode_depth(data: bytes, uri: str) -> np.ndarray:
    """Depth [m] from the bytes of a `.png` (16-bit mm), `.npy` (m) or `.exr` (m) file named `uri`."""
    ext = posixpath.splitext(uri)[1].lower()
    decoders = {".png": decode_png_depth, ".npy": decode_npy_depth, ".exr": decode_exr_depth}
    if ext not in decoders:
        raise DatasetError(f"{uri}: depth files must be {', '.join(EXTENSIONS)}, got {ext or 'no extension'}")
    return decoders[ext](data, uri)
