"""`dfd-ray import stacks MANIFEST --out URI`: real focal stacks described by a manifest.

The manifest has one row per slice:

    scene_id        stack the slice belongs to (rows of a scene may be anywhere in the file)
    path            image file (any Pillow format; PNG/TIF keep pixels exactly, 8-bit RGB or 16-bit grey)
    focus_distance  metres
    focal_length    metres
    f_number
    pixel_size      metres per pixel (sensor pitch)
    depth_path      optional: depth map as 16-bit grey PNG in millimetres, .npy in metres or
                    float EXR in metres (R or only channel); non-empty values of a scene must agree
    split           optional: train or test; non-empty values of a scene must agree; scenes
                    without one go to `default_split`

Format by extension (`dfd_ray.manifest`): `.csv` (header row), `.jsonl` (one JSON object per
line), `.json` (a JSON array of objects, or JSON lines), `.parquet`. Other columns are an error,
so that a misspelt `depth_path` or `split` cannot silently drop data. Relative paths resolve
against the manifest's folder. Slices are sorted by focus distance; lens fields must agree within
a scene. Scenes are written in the order of their first row. Every manifest and file-existence
problem is reported at once, by line, before anything is written; an undecodable image stops the
import with its name (`common.py`).
"""

from __future__ import annotations

import math
import os
import posixpath
from dataclasses import dataclass, field

import numpy as np

from dfd_ray import manifest, storage
from dfd_ray.config import require_choice
from dfd_ray.focalstack import SPLITS, DatasetError, FocalStack
from dfd_ray.importers.common import (
    ImportConfig,
    problems_error,
    read_depth,
    read_image,
    require_exists,
    write_splits,
)

REQUIRED_COLUMNS = ("scene_id", "path", "focus_distance", "focal_length", "f_number", "pixel_size")
OPTIONAL_COLUMNS = ("depth_path", "split")
LENS_FIELDS = ("focal_length", "f_number", "pixel_size")
UNITS = {"focus_distance": "metres", "focal_length": "metres", "f_number": "", "pixel_size": "metres per pixel"}
LENS_REL_TOL = 1e-6  # one lens written twice through text agrees far better than this


@dataclass
class StacksImportConfig(ImportConfig):
    default_split: str = "train"  # split of scenes whose rows name none

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice("default_split", self.default_split, SPLITS)


@dataclass
class SliceRow:
    where: str  # "<manifest> line N", for error messages
    path: str  # resolved URI of the image
    focus_distance: float  # metres


@dataclass
class SceneRows:
    scene_id: str
    where: str  # the scene's first row
    lens: dict[str, float]  # focal_length [m], f_number, pixel_size [m/px]
    slices: list[SliceRow] = field(default_factory=list)
    depth_path: str | None = None  # resolved URI
    depth_where: str = ""
    split: str | None = None
    split_where: str = ""


def manifest_folder(uri: str) -> str:
    """The folder that relative paths in the manifest `uri` are resolved against."""
    if "://" in uri:
        return uri.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(uri))


def resolve(folder: str, path: str) -> str:
    """`path` as a URI: absolute paths and URIs as they are, relative ones under `folder`."""
    if "://" in path or os.path.isabs(path):
        return path
    if "://" in folder:
        scheme, rest = folder.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    return os.path.normpath(os.path.join(folder, path))


def read_manifest(uri: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """([(where, record)], problems) of the manifest (`dfd_ray.manifest`: CSV, JSON lines, JSON or
    Parquet). A manifest that cannot be read or parsed at all raises DatasetError at once."""
    require_exists(uri, "manifest")
    try:
        return manifest.read_rows(uri, (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS), required=REQUIRED_COLUMNS)
    except manifest.ManifestError as exc:
        raise DatasetError(str(exc)) from None


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    return "" if value is None else str(value).strip()


def _positive(record: dict, key: str, where: str, problems: list[str]) -> float | None:
    raw = record.get(key)
    unit = f" ({UNITS[key]})" if UNITS[key] else ""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        problems.append(f"{where}: missing {key}{unit}")
        return None
    try:
        if isinstance(raw, bool):  # JSON true/false would pass float() as 1.0/0.0
            raise ValueError
        value = float(raw)
    except (TypeError, ValueError):
        problems.append(f"{where}: {key} = {raw!r} is not a number{unit}")
        return None
    if not math.isfinite(value) or value <= 0:
        problems.append(f"{where}: {key} must be a positive number{unit}, got {raw!r}")
        return None
    return value


def group_scenes(rows: list[tuple[str, dict]], folder: str, problems: list[str]) -> list[SceneRows]:
    """Rows grouped into scenes (in order of first appearance), slices sorted by focus distance."""
    scenes: dict[str, SceneRows] = {}
    for where, record in rows:
        before = len(problems)
        scene_id, path = _text(record, "scene_id"), _text(record, "path")
        if not scene_id:
            problems.append(f"{where}: missing scene_id")
        if not path:
            problems.append(f"{where}: missing path")
        numbers = {key: _positive(record, key, where, problems) for key in ("focus_distance", *LENS_FIELDS)}
        split = _text(record, "split") or None
        if split is not None and split not in SPLITS:
            problems.append(f"{where}: split {split!r} is not one of {list(SPLITS)}")
        if len(problems) > before:
            continue
        depth = _text(record, "depth_path")
        depth_uri = resolve(folder, depth) if depth else None
        lens = {key: float(numbers[key]) for key in LENS_FIELDS}  # type: ignore[arg-type]
        scene = scenes.get(scene_id)
        if scene is None:
            scene = scenes[scene_id] = SceneRows(scene_id, where, lens)
        for key in LENS_FIELDS:
            if not math.isclose(lens[key], scene.lens[key], rel_tol=LENS_REL_TOL):
                problems.append(
                    f"{where}: scene {scene_id!r}: {key} = {lens[key]:g} differs from {scene.lens[key]:g} "
                    f"on {scene.where} (one stack, one lens)"
                )
        if depth_uri is not None:
            if scene.depth_path is not None and scene.depth_path != depth_uri:
                problems.append(
                    f"{where}: scene {scene_id!r}: depth_path {depth!r} differs from the one on {scene.depth_where}"
                )
            elif scene.depth_path is None:
                scene.depth_path, scene.depth_where = depth_uri, where
        if split is not None:
            if scene.split is not None and scene.split != split:
                problems.append(
                    f"{where}: scene {scene_id!r}: split {split!r} differs from {scene.split!r} on {scene.split_where}"
                )
            elif scene.split is None:
                scene.split, scene.split_where = split, where
        focus = float(numbers["focus_distance"])  # type: ignore[arg-type]
        scene.slices.append(SliceRow(where, resolve(folder, path), focus))

    for scene in scenes.values():
        scene.slices.sort(key=lambda s: s.focus_distance)
        for a, b in zip(scene.slices, scene.slices[1:]):
            if a.focus_distance == b.focus_distance:
                problems.append(
                    f"{b.where}: scene {scene.scene_id!r}: focus_distance {b.focus_distance:g} m also on {a.where}"
                )
        for s in scene.slices:
            if s.focus_distance <= scene.lens["focal_length"]:
                problems.append(
                    f"{s.where}: scene {scene.scene_id!r}: focus_distance {s.focus_distance:g} m does not exceed "
                    f"focal_length {scene.lens['focal_length']:g} m (metres expected for both)"
                )
    return list(scenes.values())


def check_files(scenes: list[SceneRows], problems: list[str]) -> None:
    """Report every image or depth file that does not exist, before any decoding starts."""
    for scene in scenes:
        for s in scene.slices:
            if not storage.exists(s.path):
                problems.append(f"{s.where}: scene {scene.scene_id!r}: image {s.path} does not exist")
        if scene.depth_path is not None and not storage.exists(scene.depth_path):
            problems.append(f"{scene.depth_where}: scene {scene.scene_id!r}: depth {scene.depth_path} does not exist")


def scan(manifest: str) -> list[SceneRows]:
    """Every scene of a manifest; one DatasetError listing every manifest or missing-file problem."""
    rows, problems = read_manifest(manifest)
    scenes = group_scenes(rows, manifest_folder(manifest), problems)
    check_files(scenes, problems)
    if problems:
        raise problems_error(manifest, "manifest", problems)
    if not scenes:
        raise DatasetError(f"{manifest}: manifest has no rows")
    return scenes


def load_scene(scene: SceneRows) -> FocalStack:
    """Decode one scene's slices exactly (and its depth [m], if given)."""
    images = []
    for s in scene.slices:
        try:
            image = read_image(s.path)
        except DatasetError as exc:
            raise DatasetError(f"{s.where}: scene {scene.scene_id!r}: {exc}") from None
        if images and (image.shape != images[0].shape or image.dtype != images[0].dtype):
            raise DatasetError(
                f"{s.where}: scene {scene.scene_id!r}: {s.path} is {image.shape} {image.dtype}, "
                f"but {scene.slices[0].path} is {images[0].shape} {images[0].dtype}"
            )
        images.append(image)
    depth = None
    if scene.depth_path is not None:
        try:
            depth = read_depth(scene.depth_path)
        except DatasetError as exc:
            raise DatasetError(f"{scene.depth_where}: scene {scene.scene_id!r}: {exc}") from None
        if depth.shape != images[0].shape[:2]:
            raise DatasetError(
                f"{scene.depth_where}: scene {scene.scene_id!r}: depth {scene.depth_path} is {depth.shape}, "
                f"images are {images[0].shape[:2]}"
            )
    return FocalStack(
        scene_id=scene.scene_id,
        images=np.stack(images),
        focus_distances=np.asarray([s.focus_distance for s in scene.slices], dtype=np.float32),
        focal_length=scene.lens["focal_length"],
        f_number=scene.lens["f_number"],
        pixel_size=scene.lens["pixel_size"],
        depth=depth,
    )


def run(cfg: StacksImportConfig) -> dict:
    """Import the stacks of the manifest `cfg.src` into `cfg.out/train` and `cfg.out/test`."""
    scenes = scan(cfg.src)
    plan = {split: [s for s in scenes if (s.split or cfg.default_split) == split] for split in SPLITS}
    return write_splits(cfg, "stacks", plan, load_scene)
