"""Colour transfer between sRGB-encoded pixels and linear light (IEC 61966-2-1), values in [0, 1].

Blur mixes light, so every renderer and fit works in linear light and stores sRGB
(docs/design.md §2).
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] → linear light, float32."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear light (clipped to [0, 1]) → sRGB-encoded values, float32."""
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)
