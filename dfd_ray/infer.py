"""`dfd-ray infer --model URI --input URI --out URI`: metric depth for every photo under a prefix.

    photo URIs ─▶ read + decode + camera ─▶ DepthPredictor actors (tiles) ─▶ write PNGs + rows
    (or focal-stack Parquet, one row per slice)  (tasks)   (ActorPoolStrategy)      (tasks)

(on CPU-only clusters one actor per replica does all of it, `PhotoPipeline`).

Input: PNG/JPEG/TIFF photos under a local or s3:// prefix (recursive), or a focal-stack Parquet
dataset (each slice is a photo, its camera from the stack). Camera values per photo: manifest,
else EXIF, else `camera.*` defaults (photos.resolve_camera); the source is recorded.

Output under `out`, keys mirroring the input keys:
    <key>.depth.png        16-bit grey, millimetres (0 = invalid)
    <key>.preview.png      colour-mapped depth
    <key>.defocus.npz      the defocus maps: coc and coc_scale [px], side_logit (float16, no pickles)
    _manifest/*.parquet    one row per photo written (MANIFEST_SCHEMA)
    _errors/*.parquet      one row per photo that failed: input, stage, message, run_id
    _scenes/               photos sharing a scene_id fused through the lens, with manifest.parquet
Every photo ends in exactly one of the manifest or the errors table. Re-running with the same
`out` skips photos already in the manifest (errors are retried); `overwrite=true` redoes all.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import posixpath
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import MISSING

from dfd_ray import focalstack, optics, photos, storage
from dfd_ray.config import ConfigError, require, require_choice, save_config
from dfd_ray.depth_codec import encode_depth_mm, encode_preview
from dfd_ray.ray_session import ensure_ray

MANIFEST_SCHEMA = pa.schema([
    ("input", pa.string()), ("depth", pa.string()), ("preview", pa.string()), ("scene_id", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()), ("focus_distance", pa.float64()), ("focal_length", pa.float64()),
    ("f_number", pa.float64()), ("pixel_size", pa.float64()), ("camera_source", pa.string()), ("tiles", pa.int32()),
    ("depth_min", pa.float32()), ("depth_median", pa.float32()), ("depth_max", pa.float32()),
    ("model_id", pa.string()), ("run_id", pa.string()),
])
ERRORS_SCHEMA = pa.schema([("input", pa.string()), ("stage", pa.string()), ("message", pa.string()), ("run_id", pa.string())])
MANIFEST_DIR, ERRORS_DIR, SCENES_DIR = "_manifest", "_errors", "_scenes"


@dataclass
class CameraDefaults:
    """Used for any value neither the manifest nor the EXIF gives. None = no default."""
    focus_distance: float | None = None  # metres
    focal_length: float | None = None  # metres
    f_number: float | None = None  # the lens's f-number N (aperture = focal_length / N)
    pixel_size: float | None = None  # metres per pixel


@dataclass
class InferConfig:
    model: str = ""  # model or checkpoint URI (model.pt + model.json); "" = the shipped fod500 model
    input: str = MISSING  # prefix of photos (recursive) or a focal-stack Parquet dataset
    out: str = MISSING  # depth PNGs, previews, manifest and errors tables
    manifest: str = ""  # CSV / JSON lines / Parquet: path, focus_distance, focal_length, f_number, pixel_size[, scene_id]
    camera: CameraDefaults = field(default_factory=CameraDefaults)  # for values neither the manifest nor the EXIF gives
    tile: int = 256  # pixels; larger photos are cut into overlapping tiles of this size
    overlap: int = 32  # pixels shared by neighbouring tiles, blended
    batch_size: int = 4  # photos per predictor call, and tiles per forward pass
    io_batch: int = 16  # photos per read, decode and write task (fewer, larger tasks: less overhead)
    num_actors: int = 1  # predictor actors (model replicas)
    actor_cpus: float = 0.5  # per predictor actor; fractional on a laptop (docs/design.md §5)
    actor_gpus: float = 1.0  # per predictor actor, when the device is cuda
    device: str = "auto"  # auto: cuda when the cluster has GPUs, else cpu
    task_cpus: float = 0.25  # per read, decode and write task
    overwrite: bool = False  # redo photos already in the manifest
    run_id: str = ""  # "" = a timestamp
    ray_cpus: int = 4  # logical CPUs of an embedded local Ray (ignored on a cluster)

    def __post_init__(self) -> None:
        require(self.tile >= 16, "tile", "must be >= 16 pixels")
        require(0 <= self.overlap < self.tile // 2, "overlap", f"must be in [0, tile/2 = {self.tile // 2})")
        require(min(self.batch_size, self.io_batch, self.num_actors) >= 1, "batch_size",
                "batch_size, io_batch and num_actors must be >= 1")
        require(self.actor_cpus > 0 and self.task_cpus > 0, "actor_cpus", "actor_cpus and task_cpus must be > 0")
        require_choice("device", self.device, ["auto", "cpu", "cuda"])
        for key in photos.CAMERA_KEYS:
            value = getattr(self.camera, key)
            require(value is None or value > 0, f"camera.{key}", f"must be positive (metres) or null, got {value}")


# --- stages (plain functions and a class; Ray Data calls them on numpy batches) ---------------

def stack_slices(row: dict, input_prefix: str, done: frozenset) -> list[dict]:
    """One focal-stack row → one row per slice, with the stack's camera (flat_map)."""
    shard = storage.as_uri(row["path"], input_prefix)
    folder = photos.photo_key(posixpath.dirname(shard), input_prefix)
    out = []
    for k, (data, focus) in enumerate(zip(row["images"], row["focus_distances"])):
        path = f"{shard}#{row['scene_id']}/{k}"
        if path in done:
            continue
        out.append({"path": path, "key": posixpath.join(folder, row["scene_id"], f"slice{k}"), "bytes": data,
                    "scene_id": row["scene_id"], "focus_distance": float(focus), "focal_length": row["focal_length"],
                    "f_number": row["f_number"], "pixel_size": row["pixel_size"]})
    return out


def decode(batch: dict, input_prefix: str, manifest: dict, defaults: dict) -> dict:
    """Photo URIs (read here) or slice bytes → raw uint16 pixels + camera values, or an error
    stage and message per row."""
    n = len(batch["path"])
    from_stack = "focus_distance" in batch
    out: dict[str, list] = {k: [] for k in ("path", "key", "scene_id", "pixels", "height", "width", "camera_source",
                                            "stage", "message", *photos.CAMERA_KEYS)}
    for i in range(n):
        path = batch["path"][i]
        if from_stack:
            key, scene_id = batch["key"][i], batch["scene_id"][i]
            given, label = {k: float(batch[k][i]) for k in photos.CAMERA_KEYS}, "stack"
        else:
            key = photos.photo_key(path, input_prefix)
            given, label = manifest.get(key), "manifest"
            scene_id = (given or {}).get("scene_id", "")
        pixels, camera, stage, message = b"", {k: float("nan") for k in photos.CAMERA_KEYS}, "", ""
        h = w = 0
        try:
            stage = "read"
            data = batch["bytes"][i] if from_stack else storage.read_bytes(path)
            stage = "decode"
            image, exif = photos.decode_photo(data)
            h, w = image.shape[:2]
            stage = "camera"
            camera, source = photos.resolve_camera(given, exif, defaults)
            source = source.replace("manifest", label)
            pixels, stage = image.tobytes(), ""
        except Exception as exc:  # PhotoError, or anything a decoder throws: one error row, never a lost batch
            message = str(exc) if isinstance(exc, photos.PhotoError) else f"{type(exc).__name__}: {exc}"
            source = ""
        for name, value in (("path", path), ("key", key), ("scene_id", scene_id), ("pixels", pixels), ("height", h),
                            ("width", w), ("camera_source", source), ("stage", stage), ("message", message),
                            *camera.items()):
            out[name].append(value)
    return {k: np.array(v, dtype=object) if k in ("pixels",) else np.array(v) for k, v in out.items()}


class DepthPredictor:
    """A model replica (one per actor): photos → depth maps through overlapping tiles."""

    def __init__(self, model_uri: str, tile: int, overlap: int, batch_size: int, device: str, threads: int) -> None:
        import torch

        from dfd_ray.models.store import load_model

        torch.set_num_threads(threads)  # its CPU share; more threads than cores only contend
        self.model, _ = load_model(model_uri, device)
        self.tile, self.overlap, self.batch_size, self.device = tile, overlap, batch_size, device

    def _forward(self, images, lens):
        import torch

        out = self.model(images, lens[:, 0], optics.Lens(lens[:, 1], lens[:, 2], lens[:, 3]), likelihood=False)
        return torch.stack([torch.log(out["depth"]), out["coc"], torch.log(out["coc_scale"]), out["side_logit"]], 1)

    def _predict(self, rows: list[int], batch: dict) -> tuple[list[np.ndarray], list[int]]:
        from dfd_ray.tiling import predict_tiled

        images = [np.frombuffer(batch["pixels"][i], np.uint16).reshape(int(batch["height"][i]), int(batch["width"][i]), 3)
                  .astype(np.float32) / 65535.0 for i in rows]
        lens = np.array([[batch[k][i] for k in photos.CAMERA_KEYS] for i in rows], np.float32)
        return predict_tiled(images, lens, self._forward, self.tile, self.overlap, self.batch_size, self.device)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        maps, tiles = [b""] * n, [0] * n
        stage, message = list(batch["stage"]), list(batch["message"])
        ok = [i for i in range(n) if not stage[i]]
        try:
            results = [self._predict(ok, batch)] if ok else []
            groups = [ok]
        except Exception:  # find the photo(s) at fault instead of failing the batch
            results, groups = [], []
            for i in ok:
                try:
                    results.append(self._predict([i], batch))
                    groups.append([i])
                except Exception as exc:
                    stage[i], message[i] = "predict", f"{type(exc).__name__}: {exc}"
        for rows, (predicted, counts) in zip(groups, results):
            for i, m, c in zip(rows, predicted, counts):  # MAPS, (4, H, W)
                maps[i], tiles[i] = m.astype(np.float32).tobytes(), c
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out.update(maps=np.array(maps, dtype=object), tiles=np.array(tiles), stage=np.array(stage),
                   message=np.array(message))
        return out


class PhotoPipeline(DepthPredictor):
    """decode → predict → write in one actor, for CPU-only clusters: there the three stages share
    the same cores anyway, and one process per replica (instead of decode and write task workers
    beside the actors, each starting Python and importing the libraries) leaves the CPUs to the
    model (docs/benchmarks.md, batch inference). Every row ends as in the staged pipeline."""

    def __init__(self, decode_kwargs: dict, write_kwargs: dict, **predictor_kwargs) -> None:
        super().__init__(**predictor_kwargs)
        self.decode_kwargs, self.write_kwargs = decode_kwargs, write_kwargs

    def __call__(self, batch: dict) -> dict:
        return write_outputs(super().__call__(decode(batch, **self.decode_kwargs)), **self.write_kwargs)


def _write_table(rows: list[dict], schema: pa.Schema, folder: str, run_id: str) -> None:
    if rows:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
        storage.write_bytes(storage.join(folder, f"part-{run_id}-{uuid.uuid4().hex[:12]}.parquet"), buf.getvalue())


def write_outputs(batch: dict, out: str, run_id: str, model_id: str) -> dict:
    """Depth PNG + preview per photo, then this batch's manifest and error rows (one part each).

    The rows go out after the images, so a photo in the manifest always has its files."""
    manifest, errors, status = [], [], []
    for i in range(len(batch["path"])):
        stage, message = batch["stage"][i], batch["message"][i]
        if not stage:
            try:
                h, w = int(batch["height"][i]), int(batch["width"][i])
                maps = np.frombuffer(batch["maps"][i], np.float32).reshape(len(MAPS), h, w)
                depth = np.exp(maps[0])
                depth_uri = storage.join(out, batch["key"][i] + ".depth.png")
                preview_uri = storage.join(out, batch["key"][i] + ".preview.png")
                storage.write_bytes(defocus_uri(depth_uri), encode_defocus(maps))
                storage.write_bytes(depth_uri, encode_depth_mm(depth))
                storage.write_bytes(preview_uri, encode_preview(depth))
                lo, mid, hi = np.percentile(depth, [0, 50, 100])
                manifest.append({"input": batch["path"][i], "depth": depth_uri, "preview": preview_uri,
                                 "scene_id": batch["scene_id"][i], "height": h, "width": w,
                                 **{k: float(batch[k][i]) for k in photos.CAMERA_KEYS},
                                 "camera_source": batch["camera_source"][i], "tiles": int(batch["tiles"][i]),
                                 "depth_min": lo, "depth_median": mid, "depth_max": hi, "model_id": model_id,
                                 "run_id": run_id})
            except Exception as exc:
                stage, message = "write", f"{type(exc).__name__}: {exc}"
        if stage:
            errors.append({"input": batch["path"][i], "stage": stage, "message": message, "run_id": run_id})
        status.append("error" if stage else "done")
    _write_table(manifest, MANIFEST_SCHEMA, storage.join(out, MANIFEST_DIR), run_id)
    _write_table(errors, ERRORS_SCHEMA, storage.join(out, ERRORS_DIR), run_id)
    return {"path": batch["path"], "status": np.array(status)}


# --- tables -----------------------------------------------------------------------------------

def read_table(out: str, folder: str, schema: pa.Schema) -> pa.Table:
    """The manifest (MANIFEST_DIR) or errors (ERRORS_DIR) table of an output prefix; empty if none."""
    parts = storage.list_files(storage.join(out, folder), "*.parquet")
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(p))) for p in parts]
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()


def _clear(out: str, folder: str) -> None:
    for part in storage.list_files(storage.join(out, folder), "*.parquet"):
        fs, path = storage.filesystem(part)
        fs.rm(path)


MAPS = ("log_depth", "coc", "log_coc_scale", "side_logit")  # what the predictor returns per pixel, in order


def defocus_uri(depth_uri: str) -> str:
    """<key>.defocus.npz beside <key>.depth.png: the photo's CoC map, its scale and side logit."""
    return depth_uri.removesuffix(".depth.png") + ".defocus.npz"


def encode_defocus(maps: np.ndarray) -> bytes:
    """MAPS (4, H, W) → .npz (no pickles) of coc [px], coc_scale [px] and side_logit, float16."""
    buf = io.BytesIO()
    np.savez(buf, coc=maps[1].astype(np.float16), coc_scale=np.exp(maps[2]).astype(np.float16),
             side_logit=maps[3].astype(np.float16))
    return buf.getvalue()


_DEPTHNETS: dict = {}  # per worker process: model URI → its DepthNet (the lens decode)


def fuse_scene(group: dict, out: str, model: str) -> dict:
    """One scene's photos fused through the lens: the depth that best explains every photo's CoC
    map (`DFDModel.fuse`) → _scenes/<scene_id>.{depth,preview}.png."""
    import torch

    from dfd_ray.models.store import load_model

    if model not in _DEPTHNETS:
        _DEPTHNETS[model] = load_model(model)[0].depthnet
    net = _DEPTHNETS[model]
    row = {"scene_id": group["scene_id"], "members": len(group["members"]), "depth": "", "preview": "", "message": ""}
    try:
        members = [np.load(io.BytesIO(storage.read_bytes(defocus_uri(m["depth"]))), allow_pickle=False)
                   for m in group["members"]]
    except FileNotFoundError as exc:
        row["message"] = f"not fused: {exc} (a photo written without defocus maps: re-run with overwrite=true)"
        return row
    shapes = sorted({m["coc"].shape for m in members})
    if len(shapes) > 1:
        row["message"] = f"not fused: photo sizes differ ({shapes})"
        return row
    maps = {k: torch.from_numpy(np.stack([m[k] for m in members]).astype(np.float32)) for k in ("coc", "coc_scale", "side_logit")}
    camera = {k: torch.tensor([float(m[k]) for m in group["members"]]) for k in photos.CAMERA_KEYS}
    focus = camera["focus_distance"]
    gain = optics.Lens(camera["focal_length"], camera["f_number"], camera["pixel_size"]).gain_px(focus)
    with torch.no_grad():
        log_lik = (net.coc_log_likelihood(maps["coc"], maps["coc_scale"], focus, gain)
                   + net.side_log_likelihood(maps["side_logit"], focus))
        fused = net.decode(net.fused_log_likelihood(log_lik)).numpy()
    row["depth"] = storage.join(out, SCENES_DIR, f"{group['scene_id']}.depth.png")
    row["preview"] = storage.join(out, SCENES_DIR, f"{group['scene_id']}.preview.png")
    storage.write_bytes(row["depth"], encode_depth_mm(fused))
    storage.write_bytes(row["preview"], encode_preview(fused))
    return row


# --- the driver -------------------------------------------------------------------------------

def _model_id(model: str) -> str:
    from dfd_ray.models.store import WEIGHTS, read_meta

    try:
        read_meta(model)
        weights = storage.read_bytes(storage.join(model, WEIGHTS))
    except FileNotFoundError:
        raise ConfigError(f"config key 'model': {model} holds no model.pt + model.json (a dfd-ray model or checkpoint)") from None
    except ValueError as exc:
        raise ConfigError(f"config key 'model': {exc}") from None
    return hashlib.sha256(weights).hexdigest()[:12]


def _inputs(cfg: InferConfig) -> tuple[str, list[str], int]:
    """(kind "photos" or "stacks", photo URIs or shard URIs, files ignored); fails before cluster work."""
    try:
        found, ignored = photos.list_photos(cfg.input)
        if found:
            return "photos", found, ignored
        shards = [s for prefix in focalstack.dataset_prefixes(cfg.input) for s in focalstack.shard_uris(prefix)]
    except (FileNotFoundError, focalstack.DatasetError):
        shards = []
    if not shards:
        raise ConfigError(f"config key 'input': no PNG, JPEG or TIFF photos and no focal-stack Parquet under {cfg.input}")
    return "stacks", shards, 0


def _dataset(cfg: InferConfig, kind: str, todo: list[str], done: frozenset, manifest: dict, model_id: str,
             run_id: str, use_gpu: bool):
    import ray.data

    env = storage.worker_runtime_env()
    if kind == "photos":  # the decode stage reads each file: no read tasks, and a failed read is one error row
        ds = ray.data.from_items([{"path": u} for u in todo], override_num_blocks=-(-len(todo) // cfg.io_batch))
    else:
        arrow_fs, _ = storage.arrow_filesystem(cfg.input)
        storage.retry_in_ray_data()
        paths = [storage.filesystem(u)[1] for u in todo]
        ds = ray.data.read_parquet(paths, filesystem=arrow_fs, include_paths=True, num_cpus=cfg.task_cpus).select_columns(
            ["path", "scene_id", "images", "focus_distances", "focal_length", "f_number", "pixel_size"])
        ds = ds.flat_map(stack_slices, fn_kwargs={"input_prefix": cfg.input, "done": done}, num_cpus=cfg.task_cpus)
    decode_kwargs = {"input_prefix": cfg.input, "manifest": manifest,
                     "defaults": {k: getattr(cfg.camera, k) for k in photos.CAMERA_KEYS}}
    write_kwargs = {"out": cfg.out, "run_id": run_id, "model_id": model_id}
    predictor_kwargs = {"model_uri": cfg.model, "tile": cfg.tile, "overlap": cfg.overlap, "batch_size": cfg.batch_size,
                        "device": "cuda" if use_gpu else "cpu", "threads": max(1, round(cfg.actor_cpus))}
    pool = ray.data.ActorPoolStrategy(size=cfg.num_actors)
    if not use_gpu:  # one process per replica does all three stages
        return ds.map_batches(PhotoPipeline, batch_size=cfg.io_batch, compute=pool, num_cpus=cfg.actor_cpus,
                              fn_constructor_kwargs={"decode_kwargs": decode_kwargs, "write_kwargs": write_kwargs,
                                                     **predictor_kwargs}, **env)
    # On GPUs the CPU stages run beside the model, so that the GPU waits for neither.
    ds = ds.map_batches(decode, batch_size=None, num_cpus=cfg.task_cpus, fn_kwargs=decode_kwargs, **env)
    ds = ds.map_batches(DepthPredictor, batch_size=cfg.batch_size, compute=pool, num_cpus=cfg.actor_cpus,
                        num_gpus=cfg.actor_gpus, fn_constructor_kwargs=predictor_kwargs, **env)
    return ds.map_batches(write_outputs, batch_size=cfg.io_batch, num_cpus=cfg.task_cpus, fn_kwargs=write_kwargs, **env)


def _fuse_scenes(cfg: InferConfig, manifest: pa.Table, run_id: str) -> int:
    """Fuse every scene with a photo written by this run; returns the number of scenes fused."""
    import ray.data

    groups: dict[str, list[dict]] = {}
    for row in manifest.select(["input", "depth", "scene_id", "run_id", *photos.CAMERA_KEYS]).to_pylist():
        if row["scene_id"]:
            groups.setdefault(row["scene_id"], []).append(row)
    todo = [{"scene_id": s, "members": sorted(rows, key=lambda r: r["input"])}
            for s, rows in sorted(groups.items()) if len(rows) > 1 and any(r["run_id"] == run_id for r in rows)]
    if not todo:
        return 0
    index_uri = storage.join(cfg.out, SCENES_DIR, "manifest.parquet")
    rows = ray.data.from_items(todo).map(fuse_scene, fn_kwargs={"out": cfg.out, "model": cfg.model},
                                         num_cpus=cfg.task_cpus, **storage.worker_runtime_env()).take_all()
    fused = {r["scene_id"] for r in rows}
    if storage.exists(index_uri):
        rows += [r for r in pq.read_table(io.BytesIO(storage.read_bytes(index_uri))).to_pylist() if r["scene_id"] not in fused]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(sorted(rows, key=lambda r: r["scene_id"])), buf)
    storage.write_bytes(index_uri, buf.getvalue())
    return len(fused)


def run(cfg: InferConfig) -> dict:
    import ray

    if storage.is_local(cfg.input):
        cfg.input = os.path.abspath(cfg.input.removeprefix("file://"))
    if storage.is_local(cfg.out):
        cfg.out = os.path.abspath(cfg.out.removeprefix("file://"))
    from dfd_ray.models.store import model_uri

    cfg.model = model_uri(cfg.model)
    model_id = _model_id(cfg.model)
    kind, items, ignored = _inputs(cfg)
    try:
        manifest = photos.read_camera_manifest(cfg.manifest, cfg.input) if cfg.manifest else {}
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"config key 'manifest': {exc}") from None
    run_id = cfg.run_id or datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    if cfg.overwrite:
        _clear(cfg.out, MANIFEST_DIR)
    _clear(cfg.out, ERRORS_DIR)  # failed photos are retried; their rows come back if they fail again
    done = frozenset(read_table(cfg.out, MANIFEST_DIR, MANIFEST_SCHEMA).column("input").to_pylist())
    save_config(cfg, storage.join(cfg.out, f"_runs/{run_id}"))

    started = ensure_ray(cfg.ray_cpus)
    try:
        use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        todo = [u for u in items if u not in done] if kind == "photos" else items
        t0 = time.perf_counter()
        counts = {"done": 0, "error": 0}
        if todo:  # every photo URI is a row that each stage carries to a status: none can go missing
            ds = _dataset(cfg, kind, todo, done, manifest, model_id, run_id, use_gpu)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for status in batch["status"]:
                    counts[str(status)] += 1
        seconds = time.perf_counter() - t0
        written = read_table(cfg.out, MANIFEST_DIR, MANIFEST_SCHEMA)
        scenes = _fuse_scenes(cfg, written, run_id)
    finally:
        if started:
            ray.shutdown()
    total = len(written) + len(read_table(cfg.out, ERRORS_DIR, ERRORS_SCHEMA))
    skipped = total - counts["done"] - counts["error"]
    summary = {"run_id": run_id, "inputs": total, "done": counts["done"], "skipped": skipped,
               "errors": counts["error"], "ignored_files": ignored, "scenes_fused": scenes, "seconds": round(seconds, 2),
               "images_per_s": round(counts["done"] / seconds, 3) if seconds > 0 and counts["done"] else 0.0,
               "model_id": model_id, "device": "cuda" if use_gpu else "cpu", "out": cfg.out}
    print(f"infer {run_id}: {summary['done']} done, {skipped} skipped, {summary['errors']} errors "
          f"({total} inputs), {summary['images_per_s']:.2f} images/s on {summary['device']}, "
          f"{scenes} scenes fused -> {cfg.out}", flush=True)
    return summary
