"""The focal-stack dataset format: one Parquet row per stack, sharded as `part-NNNNN.parquet`.

Columns (other tools depend on these exact names):
    scene_id         string, unique in a dataset
    height, width    int32, pixels
    focus_distances  list<float32>, metres, one per slice
    images           list<binary>, one PNG per slice, same order as focus_distances
    focal_length     float32, metres
    f_number         float32
    pixel_size       float32, metres (sensor pitch)
    depth            binary, nullable: float32 little-endian, row-major H×W, metres, 0 = invalid
    aif              binary, nullable: PNG, diagnostics only, never a training input

A dataset root holds `train/` and `test/` prefixes; either prefix is itself a dataset URI.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dfd_ray import storage
from dfd_ray.optics import Lens

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"dfd_ray.schema_version"
SHARD_PATTERN = "part-*.parquet"
SPLITS = ("train", "test")

SCHEMA = pa.schema(
    [
        pa.field("scene_id", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("focus_distances", pa.list_(pa.float32()), nullable=False),
        pa.field("images", pa.list_(pa.binary()), nullable=False),
        pa.field("focal_length", pa.float32(), nullable=False),
        pa.field("f_number", pa.float32(), nullable=False),
        pa.field("pixel_size", pa.float32(), nullable=False),
        pa.field("depth", pa.binary(), nullable=True),
        pa.field("aif", pa.binary(), nullable=True),
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
)


class DatasetError(ValueError):
    """A focal-stack dataset, shard or row that cannot be read as such."""


@dataclass
class FocalStack:
    """One decoded focal stack.

    images: (S, H, W, 3) uint8 or uint16, slice i focused at focus_distances[i] metres.
    depth: (H, W) float32 metres, 0 where invalid; aif: (H, W, 3) like images. Both optional.
    """

    scene_id: str
    images: np.ndarray
    focus_distances: np.ndarray
    focal_length: float
    f_number: float
    pixel_size: float
    depth: np.ndarray | None = None
    aif: np.ndarray | None = None

    @property
    def lens(self) -> Lens:
        return Lens(self.focal_length, self.f_number, self.pixel_size)

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def images_float(self) -> np.ndarray:
        """Slices as float32 in [0, 1], shape (S, H, W, 3)."""
        return to_float(self.images)


def to_float(image: np.ndarray) -> np.ndarray:
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    return image.astype(np.float32) / scale


# --- images ---------------------------------------------------------------------------------

def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """Lossless PNG of an (H, W, 3) or (H, W) uint8 image, or an (H, W) uint16 grey image."""
    if image.dtype == np.uint16:
        if image.ndim == 3:
            if not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])):
                raise DatasetError("16-bit colour images cannot be stored as PNG here; use 8-bit RGB or 16-bit grey")
            image = image[..., 0]
        pil = Image.fromarray(image.astype(np.uint16))
    elif image.dtype == np.uint8:
        pil = Image.fromarray(image)
    else:
        raise DatasetError(f"images must be uint8 or uint16 arrays, got {image.dtype}")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def image_pixels(pil: Image.Image) -> np.ndarray:
    """A loaded Pillow image → (H, W, 3) uint8 as stored, or uint16 for 16-bit (and 32-bit integer,
    clipped) grey; grey is replicated, alpha and palettes resolve to RGB. The one pixel decoder of
    dataset slices, imported images and photos."""
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(pil)
        grey = np.clip(grey, 0, 65535).astype(np.uint16) if pil.mode == "I" else grey.astype(np.uint16)
        return np.repeat(grey[..., None], 3, axis=2)
    arr = np.asarray(pil if pil.mode in ("RGB", "L") else pil.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG (or any Pillow format) bytes to (H, W, 3) uint8 or uint16 (`image_pixels`)."""
    if not data:
        raise DatasetError("empty image bytes")
    try:
        with Image.open(io.BytesIO(data)) as pil:
            pil.load()
            return image_pixels(pil)
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise DatasetError(f"undecodable image: {exc}") from None


# --- rows -----------------------------------------------------------------------------------

def stack_to_row(stack: FocalStack) -> dict:
    depth = None
    if stack.depth is not None:
        depth = np.ascontiguousarray(stack.depth, dtype="<f4").tobytes()
    return {
        "scene_id": stack.scene_id,
        "height": stack.height,
        "width": stack.width,
        "focus_distances": [float(s) for s in stack.focus_distances],
        "images": [encode_png(im) for im in stack.images],
        "focal_length": float(stack.focal_length),
        "f_number": float(stack.f_number),
        "pixel_size": float(stack.pixel_size),
        "depth": depth,
        "aif": encode_png(stack.aif) if stack.aif is not None else None,
    }


def _row_problems(row: dict, decode: bool) -> tuple[list[str], FocalStack | None]:
    """Every problem of one row, and the decoded stack when there are none."""
    problems: list[str] = []
    sid = row.get("scene_id")
    if not isinstance(sid, str) or not sid:
        problems.append("scene_id is empty")
    h, w = row.get("height"), row.get("width")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        problems.append(f"height/width must be positive, got {h}x{w}")
        h = w = None
    lens = {k: row.get(k) for k in ("focal_length", "f_number", "pixel_size")}
    for key, value in lens.items():
        if value is None or not math.isfinite(value) or value <= 0:
            problems.append(f"{key} must be positive, got {value}")
    distances = row.get("focus_distances") or []
    images = row.get("images") or []
    if not distances:
        problems.append("focus_distances is empty")
    for i, s in enumerate(distances):
        if s is None or not math.isfinite(s) or s <= 0:
            problems.append(f"focus_distances[{i}] must be a positive distance in metres, got {s}")
        elif lens["focal_length"] and s <= lens["focal_length"]:
            problems.append(f"focus_distances[{i}] = {s} m is not beyond focal_length {lens['focal_length']} m")
    if len(images) != len(distances):
        problems.append(f"{len(images)} images but {len(distances)} focus_distances")
    decoded = []
    for i, data in enumerate(images):
        try:
            im = decode_image(data)
        except DatasetError as exc:
            problems.append(f"images[{i}]: {exc}")
            continue
        if h is not None and im.shape[:2] != (h, w):
            problems.append(f"images[{i}] is {im.shape[0]}x{im.shape[1]}, expected {h}x{w}")
        decoded.append(im)
    if len({im.dtype for im in decoded}) > 1:
        problems.append("slices mix 8-bit and 16-bit images")
    depth = None
    if row.get("depth") is not None:
        raw = row["depth"]
        if h is not None and len(raw) != h * w * 4:
            problems.append(f"depth has {len(raw)} bytes, expected {h}x{w}x4 = {h * w * 4}")
        elif h is not None:
            depth = np.frombuffer(raw, dtype="<f4").reshape(h, w)
            if not np.all(np.isfinite(depth)) or np.any(depth < 0):
                problems.append("depth holds negative or non-finite values (0 marks invalid pixels)")
    aif = None
    if row.get("aif") is not None:
        try:
            aif = decode_image(row["aif"])
            if h is not None and aif.shape[:2] != (h, w):
                problems.append(f"aif is {aif.shape[0]}x{aif.shape[1]}, expected {h}x{w}")
        except DatasetError as exc:
            problems.append(f"aif: {exc}")
    if problems or not decode:
        return problems, None
    return problems, FocalStack(
        scene_id=sid,
        images=np.stack(decoded),
        focus_distances=np.asarray(distances, dtype=np.float32),
        focal_length=float(lens["focal_length"]),
        f_number=float(lens["f_number"]),
        pixel_size=float(lens["pixel_size"]),
        depth=depth.copy() if depth is not None else None,
        aif=aif,
    )


def row_to_stack(row: dict, where: str = "") -> FocalStack:
    """Decode and validate one row; raises DatasetError naming `where` and the scene_id."""
    problems, stack = _row_problems(row, decode=True)
    if problems:
        raise DatasetError(f"{where}: scene {row.get('scene_id')!r}: " + "; ".join(problems))
    assert stack is not None
    return stack


# --- shards ---------------------------------------------------------------------------------

def shard_uris(uri: str) -> list[str]:
    """The shards of a dataset prefix, in order; a clear error where there are none."""
    shards = storage.list_files(uri, SHARD_PATTERN)
    if not shards:
        splits = [s for s in SPLITS if storage.list_files(storage.join(uri, s), SHARD_PATTERN)]
        hint = f"; it holds splits {splits}: use {uri.rstrip('/')}/{splits[0]}" if splits else ""
        raise DatasetError(f"no {SHARD_PATTERN} shards under {uri}{hint}")
    return shards


def dataset_prefixes(uri: str) -> list[str]:
    """`uri` itself if it holds shards, else its train/ and test/ prefixes that do."""
    if storage.list_files(uri, SHARD_PATTERN):
        return [uri]
    found = [storage.join(uri, s) for s in SPLITS if storage.list_files(storage.join(uri, s), SHARD_PATTERN)]
    if not found:
        raise DatasetError(f"no focal-stack dataset under {uri}: no {SHARD_PATTERN} there or in train/ or test/")
    return found


def _split_among(prefixes: list[str], split: str) -> str | None:
    return next((p for p in prefixes if p.rstrip("/").endswith(split)), None)


def find_split(uri: str, split: str) -> str | None:
    """The prefix of `split` ("train" or "test") under a dataset root, or None where it has none."""
    return _split_among(dataset_prefixes(uri), split)


def split_prefix(uri: str, split: str) -> str:
    """The prefix of `split` ("train" or "test") under a dataset root, else the root's first (or
    only) prefix: what training reads and what evaluation scores."""
    prefixes = dataset_prefixes(uri)
    return _split_among(prefixes, split) or prefixes[0]


def _schema_problems(schema: pa.Schema) -> list[str]:
    problems = []
    version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is None:
        problems.append(f"no schema version ({SCHEMA_VERSION_KEY.decode()}) in the Parquet metadata")
    elif version.decode() != SCHEMA_VERSION:
        problems.append(f"schema version {version.decode()} is not supported (this dfd-ray reads {SCHEMA_VERSION})")
    for field in SCHEMA:
        if field.name not in schema.names:
            problems.append(f"missing column {field.name!r}")
        elif not schema.field(field.name).type.equals(field.type):
            problems.append(f"column {field.name!r} is {schema.field(field.name).type}, expected {field.type}")
    return problems


def _read_checked(shard: str, read, schema_of):
    """`read(file)` on a shard, then check the schema that `schema_of(result)` gives."""
    try:
        result = storage.read_with(shard, read)
    except storage.StoreUnavailable:
        raise
    except Exception as exc:
        raise DatasetError(f"{shard}: not a readable Parquet file: {exc}") from None
    problems = _schema_problems(schema_of(result))
    if problems:
        raise DatasetError(f"{shard}: " + "; ".join(problems))
    return result


def read_table(shard: str) -> pa.Table:
    """One shard as an Arrow table, after checking its schema."""
    return _read_checked(shard, pq.read_table, lambda table: table.schema)


def read_metadata(shard: str) -> pq.FileMetaData:
    """One shard's Parquet footer (no row data), after checking its schema."""
    return _read_checked(shard, pq.read_metadata, lambda meta: meta.schema.to_arrow_schema())


def shard_scene_ids(shard: str) -> list[str]:
    """The scene ids of one shard, in row order (reads one column)."""
    return storage.read_with(shard, lambda f: pq.read_table(f, columns=["scene_id"]).column("scene_id").to_pylist())


def lens_gains_px(uri: str) -> np.ndarray:
    """The CoC gain G [px·m] of every slice of every stack of a dataset prefix (`Lens.gain_px`;
    reads the lens columns only)."""
    columns = ["focus_distances", "focal_length", "f_number", "pixel_size"]
    gains = []
    for shard in shard_uris(uri):
        table = storage.read_with(shard, lambda f: pq.read_table(f, columns=columns))
        for row in table.to_pylist():
            lens = Lens(row["focal_length"], row["f_number"], row["pixel_size"])
            gains.extend(lens.gain_px(float(s)) for s in row["focus_distances"])
    return np.asarray(gains, dtype=np.float64)


def scene_index(uri: str) -> dict[str, str]:
    """scene_id → shard URI for every stack under a dataset root or prefix (reads one column)."""
    return {sid: shard for prefix in dataset_prefixes(uri) for shard in shard_uris(prefix)
            for sid in shard_scene_ids(shard)}


def read_stack(shard: str, scene_id: str) -> FocalStack:
    """The stack `scene_id` of one shard, decoded and validated."""
    table = read_table(shard)
    ids = table.column("scene_id").to_pylist()
    if scene_id not in ids:
        raise DatasetError(f"{shard}: no scene {scene_id!r}")
    return row_to_stack(table.slice(ids.index(scene_id), 1).to_pylist()[0], where=shard)


def read_stacks(uri: str) -> Iterator[FocalStack]:
    """Every stack of a dataset prefix, decoded and validated, shard by shard."""
    for shard in shard_uris(uri):
        for row in read_table(shard).to_pylist():
            yield row_to_stack(row, where=shard)


def write_stacks(stacks: Iterable[FocalStack | dict], uri: str, shard_size: int = 64) -> list[str]:
    """Write stacks (or ready rows) to `uri` as part-NNNNN.parquet, replacing any earlier shards."""
    if shard_size < 1:
        raise DatasetError(f"shard_size must be >= 1, got {shard_size}")
    fs, path = storage.filesystem(uri)
    for old in storage.list_files(uri, SHARD_PATTERN):
        fs.rm(storage.filesystem(old)[1])
    fs.makedirs(path, exist_ok=True)
    written: list[str] = []
    seen: set[str] = set()
    batch: list[dict] = []

    def flush() -> None:
        shard = storage.join(uri, f"part-{len(written):05d}.parquet")
        table = pa.Table.from_pylist(batch, schema=SCHEMA)
        with storage.open_write(shard) as f:
            pq.write_table(table, f, compression={"images": "none", "aif": "none"}, write_statistics=False)
        written.append(shard)
        batch.clear()

    for item in stacks:
        row = item if isinstance(item, dict) else stack_to_row(item)
        if row["scene_id"] in seen:
            raise DatasetError(f"{uri}: duplicate scene_id {row['scene_id']!r}")
        seen.add(row["scene_id"])
        batch.append(row)
        if len(batch) == shard_size:
            flush()
    if batch:
        flush()
    return written


# --- validation -----------------------------------------------------------------------------

@dataclass
class Problem:
    shard: str
    scene_id: str | None
    message: str

    def __str__(self) -> str:
        scene = f": scene {self.scene_id!r}" if self.scene_id is not None else ""
        return f"{self.shard}{scene}: {self.message}"


_SHARD_NAME = re.compile(r"part-\d{5}\.parquet$")


def validate(uri: str) -> tuple[int, list[Problem]]:
    """Check every shard and row under a dataset root or prefix: (rows checked, problems)."""
    problems: list[Problem] = []
    rows = 0
    try:
        prefixes = dataset_prefixes(uri)
    except DatasetError as exc:
        return 0, [Problem(uri, None, str(exc))]
    for prefix in prefixes:
        seen: dict[str, str] = {}
        for shard in shard_uris(prefix):
            if not _SHARD_NAME.search(shard):
                problems.append(Problem(shard, None, "shard name is not part-NNNNN.parquet"))
            try:
                table = read_table(shard)
            except DatasetError as exc:
                problems.append(Problem(shard, None, str(exc).removeprefix(f"{shard}: ")))
                continue
            for row in table.to_pylist():
                rows += 1
                sid = row.get("scene_id")
                if sid in seen:
                    problems.append(Problem(shard, sid, f"duplicate scene_id (also in {seen[sid]})"))
                seen[sid] = shard
                row_problems, _ = _row_problems(row, decode=False)
                problems.extend(Problem(shard, sid, p) for p in row_problems)
    return rows, problems
