"""Depth for images of any size: overlapping tiles, predicted in batches, blended back.

Tiles of `tile` × `tile` pixels overlap by `overlap` pixels; inside the overlap each tile's weight
ramps linearly from ~0 at its inner edge to 1, so seams fade instead of stepping, and depths are
averaged in log space (a weighted geometric mean). Edges on the image border are not ramped.
Images no larger than one tile go through whole. Tiles of several images share a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

Box = tuple[int, int, int, int]  # top, left, height, width (pixels)


def tile_spans(length: int, tile: int, overlap: int, align: int = 8) -> list[tuple[int, int]]:
    """(start, size) spans covering [0, length), overlapping by >= `overlap` px.

    Starts are multiples of `align` so every tile's pooling grid lines up with the whole image's
    (the U-Nets pool by 2 per level); the last tile grows by up to align - 1 px to reach the end.
    """
    if length <= tile:
        return [(0, length)]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride))
    last = (length - tile) // align * align
    if last > starts[-1]:
        starts.append(last)
    return [(s, tile) for s in starts[:-1]] + [(starts[-1], length - starts[-1])]


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[Box]:
    return [(top, left, h, w) for top, h in tile_spans(height, tile, overlap) for left, w in tile_spans(width, tile, overlap)]


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    w = np.ones(length, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    if ramp_start and overlap:
        w[:overlap] = np.minimum(w[:overlap], ramp)
    if ramp_end and overlap:
        w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def blend_weights(box: Box, height: int, width: int, overlap: int) -> np.ndarray:
    """(h, w) weights of a tile: ramps over the overlap on edges shared with another tile."""
    top, left, h, w = box
    rows = _ramp(h, min(overlap, h), top > 0, top + h < height)
    cols = _ramp(w, min(overlap, w), left > 0, left + w < width)
    return rows[:, None] * cols[None, :]


Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict_tiled(images: Sequence[np.ndarray], lens: np.ndarray, forward: Forward, tile: int, overlap: int,
                  batch_size: int, device: str = "cpu") -> tuple[list[np.ndarray], list[int]]:
    """Maps (C, H, W) for images (H, W, 3) float32 in [0, 1], and the tile count of each.

    lens: (N, 4) per image (focus_distance, focal_length, f_number, pixel_size), metres.
    forward(images (B, 3, h, w), lens (B, 4)) → maps (B, C, h, w), blended across tile overlaps as
    weighted means (return a depth as its logarithm to blend it in log depth).
    """
    jobs: dict[tuple[int, int], list[tuple[int, Box]]] = {}  # tile shape → (image index, box)
    counts = []
    for i, image in enumerate(images):
        boxes = tile_boxes(image.shape[0], image.shape[1], tile, overlap)
        counts.append(len(boxes))
        for box in boxes:
            jobs.setdefault(box[2:], []).append((i, box))
    sums: list[np.ndarray | None] = [None] * len(images)
    weight_sum = [np.zeros(im.shape[:2], np.float64) for im in images]
    for tiles in jobs.values():
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start:start + batch_size]
            x = torch.from_numpy(np.stack([images[i][t:t + h, l:l + w] for i, (t, l, h, w) in chunk]))
            maps = forward(x.permute(0, 3, 1, 2).to(device), torch.from_numpy(lens[[i for i, _ in chunk]]).to(device))
            maps = maps.float().cpu().numpy()
            for (i, (t, l, h, w)), m in zip(chunk, maps):
                if sums[i] is None:
                    sums[i] = np.zeros((m.shape[0], *images[i].shape[:2]), np.float64)
                weight = blend_weights((t, l, h, w), *images[i].shape[:2], overlap)
                sums[i][:, t:t + h, l:l + w] += weight * m
                weight_sum[i][t:t + h, l:l + w] += weight
    return [(s / w).astype(np.float32) for s, w in zip(sums, weight_sum)], counts
