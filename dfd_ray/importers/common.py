"""Plumbing shared by the importers: config bases, reading source files, depth formats, writing.

Error policy (all importers): the source layout (file names, pairing, counts, manifest fields) is
checked in full before anything is written, and every problem found is raised at once in one
`DatasetError`, so a user fixes a source in one pass. Decoding happens while the stacks stream
into the Parquet writer; a file that turns out unreadable stops the import with a `DatasetError`
naming the file and the scene. The output split then holds only the stacks written before the
failure and no `config.yaml` (it is written last, on success); re-running replaces the shards.

Sources are local paths or any fsspec URI that `dfd_ray.storage` opens (s3:// included).
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
from omegaconf import MISSING

from dfd_ray import depth_codec, optics, storage
from dfd_ray.config import require, save_config
from dfd_ray.focalstack import SPLITS, DatasetError, FocalStack, decode_image, write_stacks

log = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 20  # a broken 500-scene folder should not print 3,000 lines

Item = TypeVar("Item")


# --- configs --------------------------------------------------------------------------------

@dataclass
class ImportConfig:
    src: str = MISSING  # source folder or manifest: local path or fsspec URI (s3://...)
    out: str = MISSING  # dataset root; stacks go to out/train and out/test
    shard_size: int = 64  # stacks per Parquet shard

    def __post_init__(self) -> None:
        require(self.shard_size >= 1, "shard_size", f"must be >= 1, got {self.shard_size}")


@dataclass
class Camera:
    """Lens, focal stack and depth range of an imported dataset (metres)."""

    lens: optics.Lens
    focus_distances: tuple[float, ...]
    min_depth: float  # metres; the depth range the preset's camera is meant for
    max_depth: float

    def summary(self) -> dict:
        """The lens as imported, for run summaries (the saved config holds only the overrides)."""
        return {**self.lens.summary(), "focus_distances_m": list(self.focus_distances)}

    def stack(self, scene_id: str, images: np.ndarray, depth: np.ndarray | None, aif: np.ndarray | None) -> FocalStack:
        """A focal stack seen through this camera, slice i focused at focus_distances[i]."""
        return FocalStack(
            scene_id=scene_id,
            images=images,
            focus_distances=np.asarray(self.focus_distances, dtype=np.float32),
            focal_length=self.lens.focal_length,
            f_number=self.lens.f_number,
            pixel_size=self.lens.pixel_size,
            depth=depth,
            aif=aif,
        )


@dataclass
class PresetImportConfig(ImportConfig):
    """An importer whose camera is a named preset (`PRESET`); each lens field may be overridden."""

    PRESET: ClassVar[str] = "fod500"

    focal_length: float | None = None  # metres; None keeps the preset's
    f_number: float | None = None  # None keeps the preset's
    pixel_size: float | None = None  # metres per pixel (sensor pitch); None keeps the preset's
    focus_distances: list[float] | None = None  # metres, strictly ascending, one per slice

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("focal_length", "f_number", "pixel_size"):
            value = getattr(self, key)
            ok = value is None or (math.isfinite(value) and value > 0)
            require(ok, key, f"must be a positive number, got {value}")
        if self.focus_distances is not None:
            distances = [float(s) for s in self.focus_distances]
            require(len(distances) >= 1, "focus_distances", "needs at least one distance (metres)")
            positive = all(math.isfinite(s) and s > 0 for s in distances)
            require(positive, "focus_distances", f"must be positive metres, got {distances}")
            require(
                all(a < b for a, b in zip(distances, distances[1:])),
                "focus_distances",
                f"must be strictly ascending (slice i is the i-th in focus order), got {distances}",
            )
        camera = self.camera()
        # Checked here, not at import time, so a bad override fails before any file is touched.
        require(
            min(camera.focus_distances) > camera.lens.focal_length,
            "focus_distances",
            f"every focus distance must exceed the focal length {camera.lens.focal_length} m "
            f"(a lens cannot focus closer than f), got {list(camera.focus_distances)}",
        )

    def camera(self) -> Camera:
        """The preset's camera with this config's overrides applied."""
        preset = optics.get_preset(self.PRESET)
        return Camera(
            lens=optics.Lens(*(float(getattr(self, k) if getattr(self, k) is not None else getattr(preset, k))
                               for k in ("focal_length", "f_number", "pixel_size"))),
            focus_distances=tuple(float(s) for s in (self.focus_distances or preset.focus_distances)),
            min_depth=preset.min_depth,
            max_depth=preset.max_depth,
        )


# --- source files ---------------------------------------------------------------------------

def basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/")) if "://" in uri else os.path.basename(uri.rstrip(os.sep))


def require_exists(uri: str, what: str) -> None:
    if not storage.exists(uri):
        raise DatasetError(f"{what} {uri} does not exist")


def read_source(uri: str) -> bytes:
    """The bytes of one source file; a missing or unreadable file is a DatasetError naming it."""
    try:
        return storage.read_bytes(uri)
    except FileNotFoundError:
        raise DatasetError(f"{uri}: file does not exist") from None
    except OSError as exc:
        raise DatasetError(f"{uri}: cannot read: {exc}") from None


def read_image(uri: str) -> np.ndarray:
    """(H, W, 3) uint8 (or uint16 for 16-bit grey) pixels of an image file, exactly as stored."""
    try:
        return decode_image(read_source(uri))
    except DatasetError as exc:
        message = str(exc)
        raise DatasetError(message if message.startswith(uri) else f"{uri}: {message}") from None


def problems_error(where: str, what: str, problems: Sequence[str]) -> DatasetError:
    """One DatasetError listing (the first MAX_LISTED_PROBLEMS of) `problems`."""
    shown = [f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        shown.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return DatasetError(f"{where}: {len(problems)} {what} problem(s); nothing was written:\n" + "\n".join(shown))


# --- depth ----------------------------------------------------------------------------------

def read_depth(uri: str) -> np.ndarray:
    """(H, W) float32 depth [m], 0 = invalid, of a depth file (`depth_codec.decode_depth`)."""
    return depth_codec.decode_depth(read_source(uri), uri)


# --- writing --------------------------------------------------------------------------------

def write_splits(
    cfg: ImportConfig,
    importer: str,
    plan: dict[str, list[Item]],
    build: Callable[[Item], FocalStack],
    extra: dict | None = None,
) -> dict:
    """Build and write every planned item to out/<split>; save the config; return a summary.

    Both splits are always written, an empty one included, so shards left by an earlier import
    into the same root never mix with this one. `extra` is merged into the summary.
    """
    start = time.perf_counter()
    counts: dict[str, int] = {}
    shards: dict[str, int] = {}
    for split in SPLITS:
        items = plan.get(split, [])
        counts[split] = 0

        def stream(items: list[Item] = items, split: str = split) -> Iterator[FocalStack]:
            for item in items:
                stack = build(item)
                counts[split] += 1
                if counts[split] % 50 == 0:
                    log.info("%s: %d/%d %s stacks", importer, counts[split], len(items), split)
                yield stack

        shards[split] = len(write_stacks(stream(), storage.join(cfg.out, split), cfg.shard_size))
    config_uri = save_config(cfg, cfg.out)
    seconds = time.perf_counter() - start
    return {
        "importer": importer,
        "src": cfg.src,
        "out": cfg.out,
        "stacks": counts,
        "shards": shards,
        "config": config_uri,
        **(extra or {}),
        "seconds": round(seconds, 2),
    }
