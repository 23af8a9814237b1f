"""`dfd-ray import nyuv2 SRC --out URI`: RGB-D pairs rendered to focal stacks, as DEReD does for NYUv2.

Source layout: a folder `rgb/` of colour images (`.png`, `.jpg`, `.jpeg`) and a folder `depth/`
of depth maps (`.png` 16-bit grey in millimetres, or `.npy` float metres); a pair shares its file
stem (`rgb/0001.jpg` + `depth/0001.png`). Either
    SRC/rgb, SRC/depth                     split by name: the last `test_fraction` of the sorted
                                           stems go to test/ (adjacent NYUv2 frames share a
                                           scene, so a contiguous block leaks less than a random
                                           draw would)
    SRC/train/{rgb,depth}, SRC/test/{...}  split as given; `test_fraction` is not used.
An image without depth, depth without an image, two files of one stem, or a file of another type
in these folders is a layout error. Hidden files are ignored.

Rendering (thin-lens layered, the way DEReD builds its NYUv2 focal stacks): the sRGB image is
converted to linear light; for each focus distance the depth map is cut into slabs of inverse
depth whose CoC varies by at most `layer_coc_px` pixels inside one; each slab becomes one
`defocus.Surface` (alpha 1 on its pixels, 0 elsewhere) and the surfaces are composited far to
near, so nearer slabs occlude farther ones while their blurred edges spread over what lies behind.
Pixels without valid depth (0 / non-finite) are filled from the farthest valid neighbour for
rendering only (Kinect holes sit mostly on the far side of occlusion edges); render depths are
clipped to the camera's [min_depth, max_depth]. The stored depth is the input's (metres, 0 =
invalid) and the input RGB is stored as `aif`.

Cost: one `render_focal_stack` call per slice, with as many slabs as the frame's depth range
spans CoC steps of `layer_coc_px`; on 2 CPU cores a 240×320 frame takes about 15 s for depths of
1–7 m and about a minute for 0.8–8 m at `layer_coc_px=1` (the blur kernels reach ~50 px here).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np

from dfd_ray import defocus, imaging, storage
from dfd_ray.config import require
from dfd_ray.focalstack import DatasetError, FocalStack, to_float
from dfd_ray.importers.common import (
    Camera,
    PresetImportConfig,
    basename,
    problems_error,
    read_depth,
    read_image,
    require_exists,
    write_splits,
)

RGB_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEPTH_EXTENSIONS = (".png", ".npy")


@dataclass
class Nyuv2ImportConfig(PresetImportConfig):
    PRESET: ClassVar[str] = "nyuv2"

    test_fraction: float = 0.2  # share of sorted stems (the last ones) sent to test/ when SRC has no train/ test/
    layer_coc_px: float = 1.0  # largest CoC change inside one depth slab, pixels: smaller is finer and slower

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.test_fraction <= 1.0, "test_fraction", f"must lie in [0, 1], got {self.test_fraction}")
        require(self.layer_coc_px > 0, "layer_coc_px", f"must be > 0 pixels, got {self.layer_coc_px}")


@dataclass
class RgbdPair:
    stem: str
    rgb: str  # URI
    depth: str  # URI

    @property
    def scene_id(self) -> str:
        return f"nyuv2-{self.stem}"


def _split_ext(uri: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(basename(uri))
    return stem, ext.lower()


def _pairs_in(root: str, problems: list[str]) -> list[RgbdPair]:
    """The pairs of `root/rgb` + `root/depth`, sorted by stem; problems are appended, not raised."""
    rgb_dir, depth_dir = storage.join(root, "rgb"), storage.join(root, "depth")
    found: dict[str, dict[str, str]] = {"rgb": {}, "depth": {}}
    for kind, folder, allowed in (("rgb", rgb_dir, RGB_EXTENSIONS), ("depth", depth_dir, DEPTH_EXTENSIONS)):
        if not storage.is_dir(folder):
            problems.append(f"{folder}: missing folder (expected {root}/rgb and {root}/depth)")
            continue
        for uri in storage.list_dir(folder):
            stem, ext = _split_ext(uri)
            if ext not in allowed:
                problems.append(f"{uri}: not a {kind} file (allowed: {', '.join(allowed)})")
            elif stem in found[kind]:
                problems.append(f"{uri}: {kind} for {stem!r} given twice (also {basename(found[kind][stem])})")
            else:
                found[kind][stem] = uri
    rgb, depth = found["rgb"], found["depth"]
    for stem in sorted(rgb.keys() - depth.keys()):
        problems.append(f"{rgb[stem]}: no depth for it in {depth_dir} (expected {stem}.png or {stem}.npy)")
    for stem in sorted(depth.keys() - rgb.keys()):
        problems.append(f"{depth[stem]}: no image for it in {rgb_dir} (expected {stem}.png/.jpg/.jpeg)")
    return [RgbdPair(stem, rgb[stem], depth[stem]) for stem in sorted(rgb.keys() & depth.keys())]


def scan(src: str, test_fraction: float) -> dict[str, list[RgbdPair]]:
    """{split: pairs} for a source folder; one DatasetError listing every layout problem."""
    require_exists(src, "RGB-D source folder")
    split_roots = {s: storage.join(src, s) for s in ("train", "test") if storage.is_dir(storage.join(src, s))}
    flat = storage.is_dir(storage.join(src, "rgb")) or storage.is_dir(storage.join(src, "depth"))
    if split_roots and flat:
        raise DatasetError(f"{src}: holds both rgb/ depth/ and {'/ '.join(split_roots)}/ folders; keep one layout")
    if not split_roots and not flat:
        raise DatasetError(f"{src}: expected folders rgb/ and depth/, or train/ and test/ each holding them")
    problems: list[str] = []
    if split_roots:
        plan = {split: _pairs_in(root, problems) for split, root in split_roots.items()}
    else:
        pairs = _pairs_in(src, problems)
        n_test = int(math.floor(len(pairs) * test_fraction + 0.5))
        plan = {"train": pairs[: len(pairs) - n_test], "test": pairs[len(pairs) - n_test :]}
    if problems:
        raise problems_error(src, "RGB-D layout", problems)
    if not any(plan.values()):
        raise DatasetError(f"{src}: no RGB-D pairs found")
    return plan


def fill_invalid_depth(depth_m: np.ndarray) -> np.ndarray:
    """Depth [m] with every invalid (<= 0 or non-finite) pixel set from its farthest valid neighbour.

    Grows the valid region one pixel per step (8-neighbourhood); the farthest neighbour wins because
    depth-sensor holes lie mostly on the background side of occlusion edges.
    """
    filled = np.where(np.isfinite(depth_m) & (depth_m > 0), depth_m, 0).astype(np.float32)
    valid = filled > 0
    if not valid.any():
        raise DatasetError("depth map has no valid pixel")
    h, w = filled.shape
    while not valid.all():
        padded = np.pad(filled, 1)  # 0 = no depth, so padding and holes never win the max
        neighbours = np.max([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
        grow = ~valid & (neighbours > 0)
        filled[grow] = neighbours[grow]
        valid |= grow
    return filled


def render_stack(rgb: np.ndarray, depth_m: np.ndarray, camera: Camera, layer_coc_px: float = 1.0) -> np.ndarray:
    """(S, H, W, 3) uint8 sRGB focal stack of an sRGB image in [0, 1] over a depth map [m].

    Invalid depth is filled for rendering (`fill_invalid_depth`); depths are clipped to the
    camera's [min_depth, max_depth] so a stray value cannot ask for an unbounded blur kernel.
    """
    linear = imaging.srgb_to_linear(np.asarray(rgb, dtype=np.float32))
    depth = np.clip(fill_invalid_depth(depth_m), camera.min_depth, camera.max_depth)
    inv_depth = (1.0 / depth).astype(np.float32)
    slices = []
    for focus in camera.focus_distances:
        # The same slab width and floor() that render_focal_stack uses internally for one focus
        # distance, so every Surface here is exactly one of its slabs (one blur per slab).
        gain = camera.lens.gain_px(focus)
        slab = np.floor(inv_depth / (layer_coc_px / gain)).astype(np.int64)
        surfaces = [  # ascending inverse depth = far to near, the order render_focal_stack composites
            defocus.Surface(linear, (slab == b).astype(np.float32), inv_depth) for b in np.unique(slab)
        ]
        # One call per slice: the blur kernels of a call are padded to its largest CoC, and the
        # largest CoC differs a lot between the near and far focus settings.
        rendered = defocus.render_focal_stack(
            surfaces, [focus], camera.lens, bin_px=layer_coc_px
        )
        slices.append(rendered[0])
    srgb = imaging.linear_to_srgb(np.stack(slices))
    return np.round(srgb * 255.0).astype(np.uint8)


def load_pair(pair: RgbdPair, camera: Camera, layer_coc_px: float) -> FocalStack:
    """Read one RGB-D pair and render its focal stack."""
    image = read_image(pair.rgb)
    depth = read_depth(pair.depth)
    if depth.shape != image.shape[:2]:
        raise DatasetError(
            f"{pair.depth}: depth is {depth.shape[0]}x{depth.shape[1]}, "
            f"image {pair.rgb} is {image.shape[0]}x{image.shape[1]}"
        )
    rgb = to_float(image)
    try:
        stack = render_stack(rgb, depth, camera, layer_coc_px)
    except DatasetError as exc:
        raise DatasetError(f"{pair.depth}: {exc}") from None
    # The aif is stored 8-bit like the rendered slices; a 16-bit grey input is requantised.
    aif = image if image.dtype == np.uint8 else np.round(rgb * 255.0).astype(np.uint8)
    return camera.stack(pair.scene_id, stack, depth, aif)


def run(cfg: Nyuv2ImportConfig) -> dict:
    """Render every RGB-D pair under `cfg.src` into focal stacks under `cfg.out/train|test`."""
    camera = cfg.camera()
    plan = scan(cfg.src, cfg.test_fraction)
    build = partial(load_pair, camera=camera, layer_coc_px=cfg.layer_coc_px)
    return write_splits(cfg, "nyuv2", plan, build, {"camera": camera.summary()})
