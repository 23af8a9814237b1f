"""Defocus-map teachers from the stack alone: a depth and a confidence per training scene.

No GT and no all-in-focus image: a scene's teacher depth is its splat fit's depth where a fit
exists (`splats=` a store of `dfd-ray fit`), else the classical stack depth (`stack_depth`: depth
from focus and relative blur combined; a fraction of a second per 64² stack). With `model=` a
trained model, that depth becomes the prior of the model's lens fusion of the stack's slices
(`model_depth`): a self-training round, whose teacher is the last round's model reading the
whole stack (docs/design.md §8). Through the thin
lens the one depth map gives every slice its target CoC, c_t = G_s |1/d - 1/s| px, and its side of
the focus plane; the training step derives both (`train_step.teacher_targets`), so the sidecar stores
one depth map per scene, not one per slice.

Sidecar format (docs/design.md §7): beside the dataset's shards, a folder
`<prefix>/teachers/` with one `part-NNNNN.parquet` per dataset shard of the same name, holding a
row per stack of that shard:

    scene_id    string
    source      string: "splat", "stack" (`stack_depth`), or "model" (`model_depth`)
    height, width  int32, pixels (the stack's)
    depth       binary: float16 little-endian, row-major H×W, metres
    confidence  binary: float16 little-endian, row-major H×W, in [0, 1]

A sidecar taught by a model (`model=`) carries that model's weights digest
(`models.store.weights_digest`) as file metadata `dfd_ray.teacher_model`.

`dfd-ray teach --data URI` computes them with one Ray task per shard; `dfd-ray train` runs it for
shards whose sidecar is missing or stale (other scene ids than the shard's), so a freshly imported
dataset trains with no extra command.
"""

from __future__ import annotations

import io
import posixpath
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import MISSING

from dfd_ray import focalstack, storage
from dfd_ray.config import ConfigError, require
from dfd_ray.depth_from_focus import depth_from_focus
from dfd_ray.relative_blur import depth_from_relative_blur
from dfd_ray.focalstack import DatasetError, FocalStack
from dfd_ray.ray_session import ensure_ray

FOLDER = "teachers"
VERSION_KEY = b"dfd_ray.teachers_version"
VERSION = "1"
MODEL_KEY = b"dfd_ray.teacher_model"  # file metadata of a model-taught sidecar: the model's weights digest
SCHEMA = pa.schema(
    [
        pa.field("scene_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("depth", pa.binary(), nullable=False),
        pa.field("confidence", pa.binary(), nullable=False),
    ],
    metadata={VERSION_KEY: VERSION.encode()},
)


@dataclass
class TeachConfig:
    data: str = MISSING  # dataset root (its train/ is used) or one split prefix
    splats: str = ""  # splat store (dfd-ray fit's <out>/splats): its fits teach where they exist
    model: str = ""  # trained model URI: its lens fusion of each stack teaches, the depth above as its prior
    task_cpus: float = 0.5  # CPUs per shard task
    ray_cpus: int = 2  # logical CPUs of an embedded local Ray (ignored on a cluster)
    overwrite: bool = False  # recompute sidecars that are already up to date

    def __post_init__(self) -> None:
        require(self.task_cpus > 0, "task_cpus", f"must be > 0, got {self.task_cpus}")


def sidecar_uri(shard: str) -> str:
    """The teacher sidecar of a dataset shard: <prefix>/teachers/<shard name>."""
    if "://" in shard:
        scheme, rest = shard.split("://", 1)
        return f"{scheme}://{posixpath.join(posixpath.dirname(rest), FOLDER, posixpath.basename(rest))}"
    return posixpath.join(posixpath.dirname(shard), FOLDER, posixpath.basename(shard))


AGREEMENT_PX = 0.5  # CoC disagreement of the two classical depths at which the confidence falls by 1/e


def _mean_gain_px(stack: FocalStack) -> float:
    """The stack's CoC gain G averaged over its slices, px·m: ΔCoC = G · |Δ(1/d)|."""
    return float(np.mean([stack.lens.gain_px(float(s)) for s in stack.focus_distances]))


def stack_depth(stack: FocalStack) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W) m, confidence (H, W)) of a stack from the two classical methods, no learning:
    depth from focus (focus peak) and relative blur (`dfd_ray.relative_blur`, which knows the lens).

    Their errors are largely independent, so the teacher is their mean in inverse depth (where the
    CoC is linear); the confidence is depth from focus's own (how far the focus peak stands out)
    times exp(-Δc / AGREEMENT_PX), Δc the two depths' CoC difference in pixels. On 30 generated
    fod500 stacks of 64² the mean CoC error against the GT's was 0.258 px for depth from focus
    alone, 0.214 for this teacher, 0.185 weighted by its confidence (docs/benchmarks.md).
    """
    images = stack.images_float()
    dff, dff_conf = depth_from_focus(images, stack.focus_distances)
    rel = depth_from_relative_blur(images, stack.focus_distances, stack.lens)
    gain = _mean_gain_px(stack)
    disagreement_px = gain * np.abs(1.0 / dff - 1.0 / rel)
    depth = 2.0 / (1.0 / dff + 1.0 / rel)
    return depth.astype(np.float32), (np.clip(dff_conf, 0, 1) * np.exp(-disagreement_px / AGREEMENT_PX)).astype(np.float32)


def model_depth(stack: FocalStack, model, prior: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W) m, confidence (H, W)): a trained model's lens fusion of the stack's slices
    (`DFDModel.fuse`) with `prior` (depth m, confidence) as one more factor.

    The confidence is the prior's times the fused posterior's mass within ±AGREEMENT_PX of CoC
    around its depth: high only where the classical depth was trusted and the slices agree. On D's
    40 held-out fod500 stacks (shipped model, stack-depth prior) the CoC MAE was 0.452 px against
    the stack depth's 0.530, and 0.311 px weighted by this confidence (docs/benchmarks.md; the
    fusion then an untempered product).
    """
    import torch

    from dfd_ray.evaluate import predict_slices

    depthnet = model.depthnet
    log_likelihood = depthnet.fused_log_likelihood(torch.from_numpy(predict_slices(model, stack)["log_likelihood"]))
    prior_depth, prior_conf = (torch.from_numpy(np.asarray(p, np.float32)) for p in prior)
    posterior = depthnet.posterior(log_likelihood, prior_depth, prior_conf)
    depth = depthnet.median_depth(posterior)
    mass = depthnet.mass_within(posterior, depth, AGREEMENT_PX / _mean_gain_px(stack))
    return depth.numpy().astype(np.float32), (prior_conf * mass).numpy().astype(np.float32)


def teacher_maps(stack: FocalStack, splat_store: str = "", model=None) -> tuple[np.ndarray, np.ndarray, str]:
    """(depth (H, W) m, confidence (H, W), source) of one stack: the splat fit's where `splat_store`
    holds the scene ("splat"), else the classical stack depth ("stack", `stack_depth`); with a
    `model` (a loaded DFDModel), that depth is the prior of the model's lens fusion ("model",
    `model_depth`)."""
    depth = confidence = None
    if splat_store:
        from dfd_ray.splat.scene import load_splats, splat_uri

        try:
            _, extra = load_splats(splat_uri(splat_store, stack.scene_id))
            depth, confidence, source = extra["depth"], extra["confidence"], "splat"
        except FileNotFoundError:
            pass
    if depth is None:
        depth, confidence = stack_depth(stack)
        source = "stack"
    if model is not None:
        depth, confidence = model_depth(stack, model, (depth, confidence))
        source = "model"
    return depth, confidence, source


def stack_teacher(stack: FocalStack, splat_store: str = "", model=None) -> dict:
    """One stack's sidecar row (`teacher_maps`, encoded)."""
    depth, confidence, source = teacher_maps(stack, splat_store, model)
    if depth.shape != (stack.height, stack.width):
        raise DatasetError(f"scene {stack.scene_id!r}: teacher depth is {depth.shape}, the stack "
                           f"{stack.height}x{stack.width}")
    return {"scene_id": stack.scene_id, "source": source, "height": stack.height, "width": stack.width,
            "depth": np.ascontiguousarray(depth, dtype="<f2").tobytes(),
            "confidence": np.ascontiguousarray(np.clip(confidence, 0, 1), dtype="<f2").tobytes()}


def _of_this_version(table: pa.Table) -> bool:
    return (table.schema.metadata or {}).get(VERSION_KEY) == VERSION.encode()


def read_sidecar(uri: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scene_id → (depth (H, W) m, confidence (H, W)), float32; a DatasetError naming the file
    and what is wrong when it is not a teacher sidecar."""
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except (FileNotFoundError, storage.StoreUnavailable):
        raise
    except Exception as exc:
        raise DatasetError(f"{uri}: not a readable teacher sidecar: {exc}") from None
    if not _of_this_version(table) or not set(SCHEMA.names) <= set(table.schema.names):
        raise DatasetError(f"{uri}: not a version-{VERSION} teacher sidecar (columns {table.schema.names}); "
                           "recompute it with dfd-ray teach ... overwrite=true")
    out = {}
    for row in table.to_pylist():
        h, w = row["height"], row["width"]
        maps = []
        for key in ("depth", "confidence"):
            raw = row[key]
            if len(raw) != 2 * h * w:
                raise DatasetError(f"{uri}: scene {row['scene_id']!r}: {key} holds {len(raw)} bytes, "
                                   f"{h}x{w} float16 needs {2 * h * w}")
            maps.append(np.frombuffer(raw, dtype="<f2").reshape(h, w).astype(np.float32))
        out[row["scene_id"]] = (maps[0], maps[1])
    return out


def sidecar_is_current(shard: str, model_digest: str = "") -> bool:
    """Whether the shard's sidecar exists, is of this version and holds exactly its scenes (and,
    with `model_digest`, was taught by that model: a self-training round replaces the classical
    teachers and an earlier round's)."""
    uri = sidecar_uri(shard)
    if not storage.exists(uri):
        return False
    try:
        table = storage.read_with(uri, lambda f: pq.read_table(f, columns=["scene_id"]))
    except storage.StoreUnavailable:
        raise
    except Exception:
        return False  # torn or foreign: recompute it
    if not _of_this_version(table):
        return False  # taught by another version of the teacher: recompute it
    if model_digest and (table.schema.metadata or {}).get(MODEL_KEY) != model_digest.encode():
        return False
    return sorted(table.column("scene_id").to_pylist()) == sorted(focalstack.shard_scene_ids(shard))


def teach_shard(shard: str, splat_store: str = "", model_uri: str = "", model_digest: str = "") -> dict:
    """Compute and write one shard's sidecar (taught by the model at `model_uri`, whose weights
    digest is `model_digest`, where given); returns its record."""
    start = time.perf_counter()
    model = None
    schema = SCHEMA
    if model_uri:
        from dfd_ray.models.store import load_model

        model = load_model(model_uri)[0].eval()
        schema = SCHEMA.with_metadata({**SCHEMA.metadata, MODEL_KEY: model_digest.encode()})
    rows = [stack_teacher(focalstack.row_to_stack(row, where=shard), splat_store, model)
            for row in focalstack.read_table(shard).drop_columns(["aif"]).to_pylist()]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    storage.write_bytes(sidecar_uri(shard), buf.getvalue())
    sources = [r["source"] for r in rows]
    return {"shard": shard, "stacks": len(rows), "splat": sources.count("splat"), "stack": sources.count("stack"),
            "model": sources.count("model"), "seconds": round(time.perf_counter() - start, 2)}


def ensure_teachers(prefix: str, splat_store: str = "", task_cpus: float = 0.5, overwrite: bool = False,
                    model_uri: str = "") -> dict:
    """Sidecars for every shard of `prefix` (Ray tasks for the missing or stale ones, on the
    running Ray session); returns what was done. A shard that cannot be taught (unreadable, malformed)
    fails only itself: every other shard's sidecar is still written, then a DatasetError names each
    failed shard and why, so that a rerun after the fix computes only those."""
    import ray

    shards = focalstack.shard_uris(prefix)
    digest = ""
    if model_uri:
        from dfd_ray.models.store import weights_digest

        digest = weights_digest(model_uri)
    todo = shards if overwrite else [s for s in shards if not sidecar_is_current(s, digest)]
    start = time.perf_counter()
    remote = ray.remote(num_cpus=task_cpus, max_retries=1, **storage.worker_runtime_env())(teach_shard)
    pending = {remote.remote(s, splat_store, model_uri, digest): s for s in todo}
    records, failures = [], []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(done[0])
        try:
            records.append(ray.get(done[0]))
        except DatasetError as exc:
            failures.append(f"{shard}: {getattr(exc, 'cause', exc)}")
    if failures:
        raise DatasetError(f"{len(failures)} of {len(todo)} shard(s) could not be taught (the other "
                           f"{len(records)} sidecars are written): " + "; ".join(failures))
    return {"prefix": prefix, "shards": len(shards), "computed": len(todo),
            "stacks": sum(r["stacks"] for r in records), "from_splats": sum(r["splat"] for r in records),
            "from_model": sum(r["model"] for r in records),
            "seconds": round(time.perf_counter() - start, 2)}


def teacher_depths(prefix: str, max_pixels: int = 2_000_000, seed: int = 0) -> np.ndarray:
    """A sample of the teachers' depths over a prefix (metres, at most `max_pixels`): the depth prior
    a model decodes with."""
    shards = focalstack.shard_uris(prefix)
    per_shard = max(1, max_pixels // max(len(shards), 1))
    rng = np.random.default_rng(seed)
    samples = []
    for shard in shards:
        depths = np.concatenate([d.ravel() for d, _ in read_sidecar(sidecar_uri(shard)).values()])
        samples.append(rng.choice(depths, size=min(per_shard, depths.size), replace=False))
    return np.concatenate(samples)


def run(cfg: TeachConfig) -> dict:
    try:
        prefix = focalstack.split_prefix(cfg.data, "train")
    except DatasetError as exc:
        raise ConfigError(f"config key 'data': {exc}") from None
    model_uri = ""
    if cfg.model:
        from dfd_ray.models.store import checked_model_uri

        model_uri = checked_model_uri(cfg.model, "model")
    started = ensure_ray(cfg.ray_cpus)
    try:
        result = ensure_teachers(prefix, cfg.splats, cfg.task_cpus, cfg.overwrite, model_uri)
    finally:
        if started:
            import ray

            ray.shutdown()
    return result
