"""`dfd-ray import fod500 SRC --out URI`: the FoD500 dataset of DefocusNet (CVPR 2020).

Layout: one flat folder. Per scene five stack images whose names end in `All.tif` and
one depth file ending in `Dpt.exr` (float16, metres, R channel); an optional `*Aif.tif` is taken
as the all-in-focus image. The first six characters of every name are the zero-padded scene
index; the sorted `All.tif` names of a scene are its slices in focus order, matched one to one
with the camera's ascending focus distances. Other files in the folder are ignored.

Scenes with index < `test_start` (400) go to `out/train`, the rest to `out/test`. Pixels are
stored exactly (lossless PNG of the decoded TIF); depth is the EXR's values widened to float32,
with non-finite or negative values set to 0 (invalid). The camera is the `fod500` preset; every
lens field can be overridden. Layout problems are all reported before anything is written (see
`common.py` for the error policy).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np

from dfd_ray import depth_codec, storage
from dfd_ray.config import require
from dfd_ray.focalstack import DatasetError, FocalStack
from dfd_ray.importers.common import (
    Camera,
    PresetImportConfig,
    basename,
    problems_error,
    read_image,
    read_source,
    require_exists,
    write_splits,
)

SLICE_SUFFIX = "All.tif"
DEPTH_SUFFIX = "Dpt.exr"
AIF_SUFFIX = "Aif.tif"
INDEX_CHARS = 6  # the zero-padded scene index that starts every name


@dataclass
class Fod500ImportConfig(PresetImportConfig):
    PRESET: ClassVar[str] = "fod500"

    test_start: int = 400  # scenes with index >= test_start go to test/, the others to train/

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.test_start >= 0, "test_start", f"must be >= 0, got {self.test_start}")


@dataclass
class Fod500Scene:
    index: int
    slices: list[str]  # URIs in focus order (sorted names)
    depth: str
    aif: str | None

    @property
    def scene_id(self) -> str:
        return f"fod500-{self.index:06d}"


def scan(src: str, n_slices: int) -> list[Fod500Scene]:
    """Every scene of a FoD500 folder, by index; one DatasetError listing every layout problem."""
    require_exists(src, "FoD500 source folder")
    if not storage.is_dir(src):
        raise DatasetError(f"FoD500 source {src} is not a folder")
    groups: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    problems: list[str] = []
    for uri in storage.list_dir(src):
        name = basename(uri)
        kind = next((s for s in (SLICE_SUFFIX, DEPTH_SUFFIX, AIF_SUFFIX) if name.endswith(s)), None)
        if kind is None:
            continue
        prefix = name[:INDEX_CHARS]
        if len(name) < INDEX_CHARS + len(kind) or not prefix.isdigit():
            problems.append(f"{name}: name does not start with a {INDEX_CHARS}-digit scene index")
            continue
        groups[int(prefix)][kind].append(uri)
    if not groups and not problems:
        raise DatasetError(f"FoD500 source {src} holds no *{SLICE_SUFFIX} or *{DEPTH_SUFFIX} files")

    scenes = []
    for index in sorted(groups):
        files = groups[index]
        slices = sorted(files[SLICE_SUFFIX], key=basename)
        where = f"scene {index:06d}"
        ok = True
        if len(slices) != n_slices:
            names = ", ".join(basename(u) for u in slices) or "none"
            problems.append(
                f"{where}: {len(slices)} *{SLICE_SUFFIX} slices, expected {n_slices} (one per focus distance): {names}"
            )
            ok = False
        if len(files[DEPTH_SUFFIX]) != 1:
            found = ", ".join(basename(u) for u in files[DEPTH_SUFFIX])
            problems.append(f"{where}: several depth files: {found}" if found else f"{where}: missing *{DEPTH_SUFFIX}")
            ok = False
        if len(files[AIF_SUFFIX]) > 1:
            names = ", ".join(basename(u) for u in files[AIF_SUFFIX])
            problems.append(f"{where}: several *{AIF_SUFFIX} files: {names}")
            ok = False
        if ok:
            aif = files[AIF_SUFFIX][0] if files[AIF_SUFFIX] else None
            scenes.append(Fod500Scene(index, slices, files[DEPTH_SUFFIX][0], aif))
    if problems:
        raise problems_error(src, "FoD500 layout", problems)
    return scenes


def load_scene(scene: Fod500Scene, camera: Camera) -> FocalStack:
    """Decode one scene exactly: slices as stored, depth [m] from the EXR's R channel."""
    images = [read_image(uri) for uri in scene.slices]
    first = images[0]
    for uri, image in zip(scene.slices, images):
        if image.shape != first.shape or image.dtype != first.dtype:
            raise DatasetError(
                f"{uri}: scene {scene.index:06d}: slice is {image.shape} {image.dtype}, "
                f"but {basename(scene.slices[0])} is {first.shape} {first.dtype}"
            )
    depth = depth_codec.decode_exr_depth(read_source(scene.depth), scene.depth)
    if depth.shape != first.shape[:2]:
        raise DatasetError(
            f"{scene.depth}: scene {scene.index:06d}: depth is {depth.shape}, slices are {first.shape[:2]}"
        )
    aif = None
    if scene.aif is not None:
        aif = read_image(scene.aif)
        if aif.shape != first.shape or aif.dtype != first.dtype:
            raise DatasetError(
                f"{scene.aif}: scene {scene.index:06d}: all-in-focus image is {aif.shape} {aif.dtype}, "
                f"slices are {first.shape} {first.dtype}"
            )
    return camera.stack(scene.scene_id, np.stack(images), depth, aif)


def run(cfg: Fod500ImportConfig) -> dict:
    """Import the FoD500 folder `cfg.src` into `cfg.out/train` and `cfg.out/test`."""
    camera = cfg.camera()
    scenes = scan(cfg.src, len(camera.focus_distances))
    plan = {
        "train": [s for s in scenes if s.index < cfg.test_start],
        "test": [s for s in scenes if s.index >= cfg.test_start],
    }
    build = partial(load_scene, camera=camera)
    return write_splits(cfg, "fod500", plan, build, {"camera": camera.summary()})
