"""Training samples from a focal-stack dataset: random native-resolution crops, streamed.

Three layers, one sample format:

* `make_sample(stack, crop, rng)`: pure numpy. A random `crop`×`crop` window and random flips,
  applied identically to every slice and to the depth map. Images are never resized (docs/design.md §2:
  the blur in pixels is the depth signal, and resizing without changing `pixel_size` destroys it).
* `ray_dataset(uri, crop, seed)`: the same samples as a Ray Data pipeline (Parquet shards on local
  disk or S3 → decode/validate/augment in `map_batches`), ready for
  `ray.train.get_dataset_shard(...).iter_torch_batches(batch_size=...)`.
* `TorchFocalStacks(uri, crop, seed, epoch)`: the same samples as a plain
  `torch.utils.data.IterableDataset`, for single-process training, notebooks and tests.

A sample is a dict of numpy arrays (batched: with a leading batch axis B):

    images           float32 (S, 3, h, w)  in [0, 1], slice i focused at focus_distances[i]
    focus_distances  float32 (S,)          metres
    depth            float32 (1, h, w)     metres, 0 = invalid or no ground truth
    has_depth        bool    ()            whether the stack carries ground-truth depth
    focal_length     float32 ()            metres
    f_number         float32 ()
    pixel_size       float32 ()            metres per pixel (sensor pitch), unchanged by cropping
    crop_box         int32   (4,)          top, left, height, width of the window in full-image pixels
    flipped          bool    (2,)          vertical, horizontal flip applied after cropping
    image_size       int32   (2,)          full image height, width in pixels
    scene_id         uint8   (SCENE_ID_BYTES,)  UTF-8, zero padded; decode with `scene_ids()`

With teachers (`ray_dataset(..., teachers=True)`: the scene's `dfd_ray.teachers` sidecar, cut
and flipped with the same window):

    teacher_depth    float32 (1, h, w)     metres
    teacher_conf     float32 (1, h, w)     in [0, 1]

`crop_box`, `flipped` and `image_size` let a renderer that models the whole scene (the splat actors)
render exactly the window a sample shows. `scene_id` is bytes rather than a string because Ray's
default torch collate rejects string columns; `scene_ids(batch)` turns it back into strings.

Randomness: every sample draws from its own generator keyed by (seed, epoch, scene_id), so a seed
fixes every crop independently of shard layout, task scheduling or DataLoader worker count. In the
Ray pipeline the epoch is Ray Data's execution index (each iteration over the dataset is one
execution), so a seeded pipeline gives new crops every epoch, reproducibly; `seed=None` draws fresh
entropy instead.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from dfd_ray import focalstack, storage
from dfd_ray.config import require, require_choice
from dfd_ray.focalstack import DatasetError, FocalStack

if TYPE_CHECKING:
    import ray.data

SCENE_ID_BYTES = 128
SHUFFLE_CHOICES = ("none", "files", "rows")
# Columns a training sample needs; `aif` is a diagnostic that training must never see (and would
# cost one more image of I/O per stack).
TRAIN_COLUMNS = [f.name for f in focalstack.SCHEMA if f.name != "aif"]
# Stream labels so that the order and the augmentation generators never share a key.
_ORDER_STREAM = 1
_SAMPLE_STREAM = 2


@dataclass
class StreamConfig:
    """How focal stacks become training samples.

    crop: side of the square crop in pixels at native resolution; 0 = the full image (evaluation;
        then every stack in a batch must have the same size). A crop larger than an image is an
        error, never padding: padding would invent content whose blur no lens produced.
    flip: random horizontal and vertical flips (the thin-lens blur is symmetric, so flips keep
        samples physically valid).
    seed: base seed of crops, flips and order; null = fresh entropy (not reproducible).
    shuffle: "none" (shard order), "files" (shard order shuffled), "rows" (Ray: a global row
        shuffle before decoding; TorchFocalStacks: shards shuffled and rows shuffled within a window
        of `shuffle_window_shards` shards).
    reseed_each_epoch: Ray only; False repeats the same crops every epoch (e.g. a fixed validation set).
    crops_per_pass: Ray only; random crops drawn from every stack in one pass over the data (one
        Ray Data execution), interleaved so that consecutive samples come from different stacks.
        Each pass restarts the pipeline (seconds on a small node), so training on a small dataset
        sets it > 1 to make a pass long; crops of a stack stay distinct (pass, repeat) draws.
    map_num_cpus / read_num_cpus: logical CPUs per Ray Data task (decode, and the one read task per
        shard). Fractional, because a small node whose CPUs are held by train workers never
        schedules a task that wants a whole CPU.
    map_batch_size: stacks decoded per Ray `map_batches` call (bounds the memory of one task).
    max_tasks: Ray only; data tasks in flight at once, 0 = as many as the CPUs allow. Each new task
        may start a worker process (seconds of imports), and the tasks of a pass all start at
        once, beside training: a small cap keeps a pass's start from stalling the steps.
    shuffle_window_shards: TorchFocalStacks only; shards whose rows are shuffled together.
    """

    crop: int = 64
    flip: bool = True
    seed: Optional[int] = 0
    shuffle: str = "files"
    reseed_each_epoch: bool = True
    map_num_cpus: float = 0.25
    read_num_cpus: float = 0.25
    map_batch_size: int = 8
    max_tasks: int = 0
    shuffle_window_shards: int = 2
    crops_per_pass: int = 1

    def __post_init__(self) -> None:
        require(self.crop >= 0, "crop", f"must be >= 0 pixels (0 = full image), got {self.crop}")
        require(self.seed is None or self.seed >= 0, "seed", f"must be >= 0 or null, got {self.seed}")
        require_choice("shuffle", self.shuffle, SHUFFLE_CHOICES)
        require(self.map_num_cpus > 0, "map_num_cpus", f"must be > 0, got {self.map_num_cpus}")
        require(self.read_num_cpus > 0, "read_num_cpus", f"must be > 0, got {self.read_num_cpus}")
        require(self.map_batch_size >= 1, "map_batch_size", f"must be >= 1, got {self.map_batch_size}")
        require(self.max_tasks >= 0, "max_tasks", f"must be >= 0 (0 = no cap), got {self.max_tasks}")
        require(self.crops_per_pass >= 1, "crops_per_pass", f"must be >= 1, got {self.crops_per_pass}")
        require(
            self.shuffle_window_shards >= 1,
            "shuffle_window_shards",
            f"must be >= 1, got {self.shuffle_window_shards}",
        )

    def ray_dataset(self, uri: str) -> ray.data.Dataset:
        """The Ray Data pipeline of `uri` with these options (see `ray_dataset`)."""
        return _ray_dataset(uri, self)

    def torch_dataset(self, uri: str, epoch: int = 0, rank: int = 0, world_size: int = 1) -> TorchFocalStacks:
        """A `TorchFocalStacks` over `uri` with these options."""
        return TorchFocalStacks(
            uri,
            self.crop,
            self.seed,
            epoch,
            flip=self.flip,
            shuffle=self.shuffle,
            shuffle_window_shards=self.shuffle_window_shards,
            rank=rank,
            world_size=world_size,
        )


# --- samples ----------------------------------------------------------------------------------

def encode_scene_id(scene_id: str) -> np.ndarray:
    """`scene_id` as zero-padded UTF-8, uint8 (SCENE_ID_BYTES,)."""
    raw = scene_id.encode("utf-8")
    if len(raw) > SCENE_ID_BYTES or b"\0" in raw:
        raise DatasetError(
            f"scene {scene_id!r}: scene ids used for training must be at most {SCENE_ID_BYTES} "
            "UTF-8 bytes without NUL characters"
        )
    out = np.zeros(SCENE_ID_BYTES, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def scene_ids(encoded: np.ndarray | torch.Tensor | Mapping[str, Any]) -> list[str]:
    """Scene ids of a batch (or one sample): accepts the batch dict or its `scene_id` array/tensor."""
    if isinstance(encoded, Mapping):
        encoded = encoded["scene_id"]
    if isinstance(encoded, torch.Tensor):
        encoded = encoded.detach().cpu().numpy()
    arr = np.asarray(encoded, dtype=np.uint8)
    if arr.ndim == 1:
        arr = arr[None]
    return [bytes(row).rstrip(b"\0").decode("utf-8") for row in arr]


def _scene_key(scene_id: str) -> int:
    # A stable 64-bit key: Python's hash() of a str is salted per process, so it would give
    # different crops in different Ray workers.
    return int.from_bytes(hashlib.blake2b(scene_id.encode("utf-8"), digest_size=8).digest(), "little")


def sample_rng(seed: int | None, epoch: int, scene_id: str) -> np.random.Generator:
    """The augmentation generator of one stack in one epoch; fresh entropy where `seed` is None."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([_SAMPLE_STREAM, seed, epoch, _scene_key(scene_id)])


def _crop_size(crop: int | tuple[int, int] | None, height: int, width: int) -> tuple[int, int]:
    if crop is None or crop == 0:
        return height, width
    if isinstance(crop, int):
        return crop, crop
    return int(crop[0]), int(crop[1])


def make_sample(
    stack: FocalStack,
    crop: int | tuple[int, int] | None,
    rng: np.random.Generator,
    flip: bool = True,
    where: str = "",
    teacher: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """One training sample: a random crop (pixels, native resolution) and random flips, identical
    for every slice, the depth map and the `teacher` (depth, confidence) maps where given. `crop`
    is a side, (height, width), or 0/None for the full image. `where` (e.g. the dataset URI) goes
    into error messages.
    """
    H, W = stack.height, stack.width
    h, w = _crop_size(crop, H, W)
    if h <= 0 or w <= 0:
        raise DatasetError(f"crop must be positive pixels, got {h}x{w}")
    if h > H or w > W:
        prefix = f"{where}: " if where else ""
        raise DatasetError(
            f"{prefix}scene {stack.scene_id!r} is {H}x{W} px, smaller than the {h}x{w} px crop; "
            "crops are cut at native resolution and never resized or padded (docs/design.md §2): "
            "use a smaller crop, or crop=0 for full images"
        )
    # Always draw all four numbers so that a given seed picks the same window with flips on or off.
    top = int(rng.integers(0, H - h + 1))
    left = int(rng.integers(0, W - w + 1))
    flip_v, flip_h = (rng.random(2) < 0.5) & flip

    images = stack.images[:, top : top + h, left : left + w]  # (S, h, w, 3), still integer
    maps = {"depth": stack.depth} if stack.depth is not None else {}
    if teacher is not None:
        if teacher[0].shape != (H, W):
            raise DatasetError(f"{where}: scene {stack.scene_id!r}: teacher maps are {teacher[0].shape}, "
                               f"the stack {H}x{W}: recompute the teachers (dfd-ray teach ... overwrite=true)")
        maps |= {"teacher_depth": teacher[0], "teacher_conf": teacher[1]}
    maps = {k: m[top : top + h, left : left + w] for k, m in maps.items()}
    if flip_v:
        images = images[:, ::-1]
        maps = {k: m[::-1] for k, m in maps.items()}
    if flip_h:
        images = images[:, :, ::-1]
        maps = {k: m[:, ::-1] for k, m in maps.items()}
    depth = maps.pop("depth", None)
    images = np.ascontiguousarray(focalstack.to_float(images).transpose(0, 3, 1, 2))
    if depth is None:
        depth_out = np.zeros((1, h, w), dtype=np.float32)
    else:
        depth_out = np.ascontiguousarray(depth, dtype=np.float32)[None]
    teacher_maps = {k: np.ascontiguousarray(m, dtype=np.float32)[None] for k, m in maps.items()}
    return teacher_maps | {
        "images": images,
        "focus_distances": np.asarray(stack.focus_distances, dtype=np.float32),
        "depth": depth_out,
        "has_depth": np.asarray(stack.depth is not None),
        "focal_length": np.asarray(stack.focal_length, dtype=np.float32),
        "f_number": np.asarray(stack.f_number, dtype=np.float32),
        "pixel_size": np.asarray(stack.pixel_size, dtype=np.float32),
        "crop_box": np.asarray([top, left, h, w], dtype=np.int32),
        "flipped": np.asarray([flip_v, flip_h], dtype=bool),
        "image_size": np.asarray([H, W], dtype=np.int32),
        "scene_id": encode_scene_id(stack.scene_id),
    }


def stack_samples(samples: Sequence[dict[str, np.ndarray]], where: str = "") -> dict[str, np.ndarray]:
    """Samples stacked along a new batch axis; a clear error where their shapes differ."""
    if not samples:
        raise DatasetError(f"{where}: no samples to batch")
    first = samples[0]
    for key in first:
        shapes = {s[key].shape for s in samples}
        if len(shapes) > 1:
            ids = scene_ids(np.stack([s["scene_id"] for s in samples]))
            detail = ", ".join(f"{sid!r} {s[key].shape}" for sid, s in zip(ids, samples))
            raise DatasetError(
                f"{where}: stacks in one batch differ in {key!r} shape: {detail}; a batch needs equal "
                "slice counts and (with crop=0) equal image sizes"
            )
    return {key: np.stack([s[key] for s in samples]) for key in first}


# --- reading --------------------------------------------------------------------------------



def _checked_shards(uri: str) -> list[tuple[str, int]]:
    """(shard URI, rows) of a dataset prefix, every schema checked before any work is scheduled."""
    return [(shard, int(focalstack.read_metadata(shard).num_rows)) for shard in focalstack.shard_uris(uri)]


# --- Ray Data -------------------------------------------------------------------------------

_SIDECARS: dict[str, dict] = {}  # per worker process: the teacher sidecars it has read, newest last
_SIDECARS_KEPT = 8


def _teacher_of(sidecar: str, scene_id: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    from dfd_ray import teachers

    if sidecar not in _SIDECARS:
        try:
            _SIDECARS[sidecar] = teachers.read_sidecar(sidecar)
        except FileNotFoundError:
            raise DatasetError(f"{where}: no teacher sidecar {sidecar}: run dfd-ray teach --data ...") from None
        while len(_SIDECARS) > _SIDECARS_KEPT:
            _SIDECARS.pop(next(iter(_SIDECARS)))
    if scene_id not in _SIDECARS[sidecar]:
        raise DatasetError(f"{where}: scene {scene_id!r} is not in its teacher sidecar {sidecar}: recompute it "
                           "(dfd-ray teach ... overwrite=true)")
    return _SIDECARS[sidecar][scene_id]


def _execution_epoch(reseed: bool) -> int:
    """The epoch a Ray Data task runs in. Ray Data counts executions of a dataset (one per epoch of
    iteration) and hands the counter to its tasks; it is a private field, so a Ray without it
    falls back to repeating epoch 0."""
    from ray.data import DataContext

    return int(getattr(DataContext.get_current(), "_execution_idx", 0)) if reseed else 0


def _read_shards(batch: dict[str, np.ndarray], *, shards: list[str], shuffle: str, order_seed: int,
                 reseed: bool) -> pa.Table:
    """Ray `map_batches` body: the training columns of the shards at `batch["shard"]` (positions in
    this epoch's shard order), each row's shard URI in `path`."""
    order = shard_order(len(shards), shuffle, order_seed, _execution_epoch(reseed))
    tables = []
    for position in batch["shard"]:
        shard = shards[order[int(position)]]
        table = read_training_columns(shard)
        tables.append(table.append_column("path", pa.array([shard] * table.num_rows, pa.string())))
    return pa.concat_tables(tables)


def _shard_samples(batch: dict[str, np.ndarray], *, read: dict, decode: dict,
                   batch_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """Ray `map_batches` body: `_read_shards` then `_ray_samples`, `batch_rows` stacks at a time."""
    table = _read_shards(batch, **read)
    for start in range(0, table.num_rows, batch_rows):
        yield _ray_samples(table.slice(start, batch_rows), **decode)


def shard_order(count: int, shuffle: str, order_seed: int, epoch: int) -> np.ndarray:
    """The order in which an epoch reads `count` shards: shuffled from (order_seed, epoch) unless
    `shuffle` is "none"; the same in the Ray pipeline and `TorchFocalStacks`."""
    order = np.arange(count)
    if shuffle != "none":
        np.random.default_rng([_ORDER_STREAM, order_seed, epoch]).shuffle(order)
    return order


def read_training_columns(shard: str) -> pa.Table:
    """The training columns of one shard, retried on the store's transient faults; a file that is
    not Parquet is a DatasetError naming it."""
    try:
        return storage.read_with(shard, lambda f: pq.read_table(f, columns=TRAIN_COLUMNS))
    except storage.StoreUnavailable:
        raise
    except Exception as exc:
        raise DatasetError(f"{shard}: not a readable Parquet file: {exc}") from None


def _ray_samples(
    batch: pa.Table, *, uri: str, crop: int, flip: bool, seed: int | None, reseed: bool, crops_per_pass: int,
    sidecars: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Ray `map_batches` body: decode, validate and augment a block of Parquet rows; `sidecars`
    (shard file name → teacher sidecar URI) adds the teacher maps."""
    epoch = _execution_epoch(reseed)
    stacks, teacher_maps = [], []
    for row in batch.to_pylist():
        path = row.pop("path", "?")
        where = f"{uri} (shard {path})"
        stacks.append(focalstack.row_to_stack(row, where=where))
        if sidecars is not None:
            teacher_maps.append(_teacher_of(sidecars[posixpath.basename(path)], stacks[-1].scene_id, where))
    samples = [
        make_sample(stack, crop, sample_rng(seed, epoch * crops_per_pass + repeat, stack.scene_id), flip=flip,
                    where=uri, teacher=teacher_maps[i] if sidecars is not None else None)
        for repeat in range(crops_per_pass)
        for i, stack in enumerate(stacks)
    ]
    if not samples:
        return {}
    return stack_samples(samples, where=uri)


def ray_dataset(
    uri: str,
    crop: int = 64,
    seed: int | None = None,
    *,
    flip: bool = True,
    shuffle: str = "files",
    reseed_each_epoch: bool = True,
    map_num_cpus: float = 0.25,
    read_num_cpus: float = 0.25,
    map_batch_size: int = 8,
    crops_per_pass: int = 1,
    max_tasks: int = 0,
    teachers: bool = False,
) -> ray.data.Dataset:
    """A Ray Dataset of training samples (module docstring) from the focal-stack prefix `uri`.

    `uri` is a local path or any fsspec URI (s3:// honours AWS_ENDPOINT_URL; Ray tasks resolve
    credentials on their own node, as every Ray Data reader does). Schemas are checked here, before
    anything runs; a bad row fails the pipeline with a `DatasetError` naming the dataset, shard
    and scene. Feed it to `TorchTrainer(datasets=...)` and iterate
    `get_dataset_shard(...).iter_torch_batches(batch_size=...)`. `teachers=True` adds each
    scene's teacher maps from its shard's sidecar (`dfd_ray.teachers`; computed beforehand).
    """
    cfg = StreamConfig(
        crop=crop,
        flip=flip,
        seed=seed,
        shuffle=shuffle,
        reseed_each_epoch=reseed_each_epoch,
        map_num_cpus=map_num_cpus,
        read_num_cpus=read_num_cpus,
        map_batch_size=map_batch_size,
        crops_per_pass=crops_per_pass,
        max_tasks=max_tasks,
    )
    return _ray_dataset(uri, cfg, teachers)


def _ray_dataset(uri: str, cfg: StreamConfig, teachers: bool = False) -> ray.data.Dataset:
    import ray.data
    from ray.data import RandomSeedConfig

    shards = [shard for shard, _ in _checked_shards(uri)]
    sidecars = None
    if teachers:
        from dfd_ray.teachers import sidecar_uri

        sidecars = {posixpath.basename(shard): sidecar_uri(shard) for shard in shards}
    # The shard order of a seedless pipeline: one draw shared by all its read tasks.
    order_seed = cfg.seed if cfg.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    # Shards enter as positions in the epoch's order and each task reads its one shard itself, so a
    # task holds one shard's rows whatever the dataset's size. (Ray 2.60's read_parquet packs files
    # into read units of up to 128 MiB of rows, each decoded by one task whose crops outgrow a
    # laptop's object store: at 3,600 stacks it spilled to disk and tripled the step time,
    # docs/benchmarks.md.) Ray bundles small input blocks into one task by bytes, and would bundle
    # a fused read → decode by the decode's batch size, hence one function with batch_size=1.
    ds = ray.data.from_items([{"shard": i} for i in range(len(shards))], override_num_blocks=len(shards))
    read = {"shards": shards, "shuffle": cfg.shuffle, "order_seed": order_seed, "reseed": cfg.reseed_each_epoch}
    decode = {"uri": uri, "crop": cfg.crop, "flip": cfg.flip, "seed": cfg.seed, "reseed": cfg.reseed_each_epoch,
              "crops_per_pass": cfg.crops_per_pass, "sidecars": sidecars}
    compute = ray.data.TaskPoolStrategy(size=cfg.max_tasks or None)
    if cfg.shuffle == "rows":
        # Shuffle the encoded rows: PNG bytes are several times smaller than decoded float crops.
        ds = ds.map_batches(_read_shards, batch_size=1, batch_format="numpy", num_cpus=cfg.read_num_cpus,
                            compute=compute, fn_kwargs=read, **storage.worker_runtime_env())
        ds = ds.random_shuffle(
            seed=RandomSeedConfig(seed=cfg.seed, reseed_after_execution=cfg.reseed_each_epoch),
            num_cpus=cfg.read_num_cpus,
        )
        ds = ds.map_batches(_ray_samples, batch_format="pyarrow", batch_size=cfg.map_batch_size,
                            num_cpus=cfg.map_num_cpus, compute=compute, fn_kwargs=decode,
                            **storage.worker_runtime_env())
    else:
        ds = ds.map_batches(_shard_samples, batch_size=1, batch_format="numpy", num_cpus=cfg.map_num_cpus,
                            compute=compute,
                            fn_kwargs={"read": read, "decode": decode, "batch_rows": cfg.map_batch_size},
                            **storage.worker_runtime_env())  # the tasks open the teacher sidecars themselves
    # Without this Ray wraps a DatasetError from a row in a generic UserCodeException; with it the
    # caller can catch DatasetError and reads the scene and shard in the message.
    ds.context.raise_original_map_exception = True
    _without_downstream_backpressure(ds)
    return ds


def _without_downstream_backpressure(ds: ray.data.Dataset) -> None:
    """Ray's backpressure policies less the downstream-capacity one (design §5). Beside a training
    worker that one kept the executor turning without a wait while a task's next block was ready
    (0.4 of a core at a pass's start, the step twice as slow); the resource-budget policy still
    bounds the object store the pipeline may fill."""
    from ray.data._internal.execution import backpressure_policy  # private to Ray Data 2.60

    key = backpressure_policy.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY
    policies = ds.context.get_config(key, backpressure_policy.ENABLED_BACKPRESSURE_POLICIES)
    ds.context.set_config(key, [p for p in policies
                                if p is not backpressure_policy.DownstreamCapacityBackpressurePolicy])


# --- plain PyTorch --------------------------------------------------------------------------

class TorchFocalStacks(IterableDataset):
    """Training samples of a focal-stack prefix without Ray, for `torch.utils.data.DataLoader`.

    Each epoch has its own deterministic order and augmentation (from `seed` and `epoch`; call
    `set_epoch` before iterating, as with `DistributedSampler`). Work is split across DataLoader
    workers and, for several processes, across `rank` of `world_size`: whole shards per part when
    there are at least as many shards as parts (each part reads only its shards; parts may then
    differ by up to one shard's rows), else rows round-robin (every part reads every shard).
    """

    def __init__(
        self,
        uri: str,
        crop: int = 64,
        seed: int | None = None,
        epoch: int = 0,
        *,
        flip: bool = True,
        shuffle: str = "files",
        shuffle_window_shards: int = 2,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.config = StreamConfig(
            crop=crop, flip=flip, seed=seed, shuffle=shuffle, shuffle_window_shards=shuffle_window_shards
        )
        require(epoch >= 0, "epoch", f"must be >= 0, got {epoch}")
        require(world_size >= 1 and 0 <= rank < world_size, "rank", f"{rank} is not in [0, {world_size})")
        require(
            world_size == 1 or seed is not None,
            "seed",
            "several processes need a shared seed to agree on the order (got null)",
        )
        self.uri = uri
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.shards = _checked_shards(uri)
        # A seedless dataset still needs ONE order shared by its DataLoader workers, which each
        # get a copy of this object: draw it once, here.
        drawn = int(np.random.SeedSequence().entropy % 2**63)
        self._order_seed = self.config.seed if self.config.seed is not None else drawn

    @property
    def num_rows(self) -> int:
        """Stacks in the whole dataset (all ranks and workers)."""
        return sum(n for _, n in self.shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _part(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _assignment(self, part: int, parts: int) -> list[tuple[int, np.ndarray]]:
        """(shard index, row indices) this part reads this epoch, in reading order."""
        order = shard_order(len(self.shards), self.config.shuffle, self._order_seed, self.epoch)
        if len(self.shards) >= parts:
            return [(int(i), np.arange(self.shards[i][1])) for i in order[part::parts]]
        out = []
        start = 0  # global position of the shard's first row in this epoch's order
        for i in order:
            n = self.shards[i][1]
            rows = np.arange(n)[(start + np.arange(n)) % parts == part]
            if len(rows):
                out.append((int(i), rows))
            start += n
        return out

    def _read_rows(self, shard_index: int, rows: np.ndarray) -> list[dict]:
        shard = self.shards[shard_index][0]
        table = read_training_columns(shard)
        picked = table.take(pa.array(rows, type=pa.int64())).to_pylist()
        for row in picked:
            row["_shard"] = shard
        return picked

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        part, parts = self._part()
        assignment = self._assignment(part, parts)
        window_rng = np.random.default_rng([_ORDER_STREAM, self._order_seed, self.epoch, part + 1])
        window = self.config.shuffle_window_shards if self.config.shuffle == "rows" else 1
        for start in range(0, len(assignment), window):
            rows: list[dict] = []
            for shard_index, indices in assignment[start : start + window]:
                rows.extend(self._read_rows(shard_index, indices))
            if self.config.shuffle == "rows":
                rows = [rows[i] for i in window_rng.permutation(len(rows))]
            for row in rows:
                shard = row.pop("_shard")
                stack = focalstack.row_to_stack(row, where=shard)
                rng = sample_rng(self.config.seed, self.epoch, stack.scene_id)
                yield make_sample(stack, self.config.crop, rng, flip=self.config.flip, where=self.uri)

    def __repr__(self) -> str:
        return (
            f"TorchFocalStacks({self.uri!r}, crop={self.config.crop}, seed={self.config.seed}, "
            f"epoch={self.epoch}, stacks={self.num_rows}, shards={len(self.shards)})"
        )

