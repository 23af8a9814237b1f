"""`dfd-ray fit --data URI --out URI`: fit every scene of a dataset, in parallel Ray tasks.

Writes per scene `out/splats/<scene_id>.npz` (splats + depth, confidence, AIF), the depth as
`out/depth/<scene_id>.png` (16-bit, millimetres) with a colour preview `<scene_id>_preview.png`,
and `out/fit_metrics.json`: per scene and averaged, the splat depth's and the classical
depth-from-focus baseline's `abs_rel`, `rmse`, `delta1` (and the other docs/design.md §6 metrics) over
the same pixels, where GT depth exists. A scene that fails is recorded there and the job goes on.

Each finished scene's record goes last to `out/records/<scene_id>.json`, so a run that stops
(Ctrl-C, SIGTERM, a crash) resumes when the same command runs again: scenes with a record and a
splat file that loads are kept, the others (never fitted, torn, failed) are fitted;
`overwrite=true` refits everything.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from omegaconf import MISSING

from dfd_ray import depth_codec, focalstack, storage
from dfd_ray.config import require, save_config
from dfd_ray.depth_from_focus import depth_from_focus
from dfd_ray.metrics import depth_metrics, mean_metrics
from dfd_ray.ray_session import ensure_ray
from dfd_ray.splat import scene
from dfd_ray.splat.fit import FitConfig, fit_scene, save_fit


@dataclass
class FitJobConfig:
    data: str = MISSING  # dataset root (train/ and test/) or one split prefix
    out: str = MISSING  # where splats, depth PNGs and fit_metrics.json go
    fit: FitConfig = field(default_factory=FitConfig)
    max_scenes: int = 0  # per split; 0 fits them all
    task_cpus: float = 0.0  # CPUs (= torch threads) per fitting task; 0 = the cluster's CPUs shared among the scenes
    ray_cpus: int = 2  # logical CPUs of an embedded local Ray (ignored on a cluster)
    eval_max_depth: float | None = None  # metres; GT beyond it is left out of the metrics
    overwrite: bool = False  # refit scenes a previous run finished (else they are kept)

    def __post_init__(self) -> None:
        require(self.max_scenes >= 0, "max_scenes", "must be >= 0")
        require(self.task_cpus >= 0, "task_cpus", "must be >= 0 (0 = share the CPUs among the scenes)")


def splat_uri(out: str, scene_id: str) -> str:
    return scene.splat_uri(storage.join(out, "splats"), scene_id)


def record_uri(out: str, scene_id: str) -> str:
    return storage.join(out, "records", f"{scene_id}.json")


def finished_record(out: str, scene_id: str) -> dict | None:
    """The record of a scene a previous run finished, or None where it must be fitted (again):
    no record, or a record or splat file that does not read back whole."""
    try:
        record = json.loads(storage.read_bytes(record_uri(out, scene_id)))
        scene.load_splats(splat_uri(out, scene_id))
    except FileNotFoundError:
        return None
    except ValueError as exc:  # torn or corrupt (JSONDecodeError is a ValueError)
        print(f"fit {scene_id}: refitting, its earlier output does not read back: {exc}", flush=True)
        return None
    return record if isinstance(record, dict) and record.get("scene_id") == scene_id else None


def fit_one(stack: focalstack.FocalStack, cfg: FitJobConfig, threads: int = 1,
            log: Callable[[str], None] | None = None) -> dict:
    """Fit one scene with `threads` torch threads, write its outputs, and return its record for
    fit_metrics.json; `log` gets the fit's progress lines."""
    import torch

    torch.set_num_threads(max(1, threads))
    result = fit_scene(stack, cfg.fit, log=log)
    save_fit(result, splat_uri(cfg.out, stack.scene_id))
    storage.write_bytes(storage.join(cfg.out, "depth", f"{stack.scene_id}.png"), depth_codec.encode_depth_mm(result.depth))
    storage.write_bytes(storage.join(cfg.out, "depth", f"{stack.scene_id}_preview.png"), depth_codec.encode_preview(result.depth))
    record = {"scene_id": stack.scene_id, "seconds": round(result.seconds, 2),
              "final_loss": result.losses[-1] if result.losses else None}
    if stack.depth is not None:
        baseline, _ = depth_from_focus(stack.images_float(), stack.focus_distances)
        record["splat"] = depth_metrics(result.depth, stack.depth, cfg.eval_max_depth)
        record["dff"] = depth_metrics(baseline, stack.depth, cfg.eval_max_depth)
    storage.write_bytes(record_uri(cfg.out, stack.scene_id), json.dumps(record).encode())  # last: the scene is done
    return record


def fit_task(stack: focalstack.FocalStack, cfg: FitJobConfig, threads: int) -> Iterator[str | dict]:
    """The Ray task: yields the fit's progress lines as they come, then the scene's record.

    A streaming generator, so that the driver prints progress even where Ray does not forward a
    task's output (an embedded local Ray). The fit runs in a thread because its progress arrives
    through a callback; its exception is raised here, after the lines it logged."""
    lines: queue.Queue[str] = queue.Queue()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["record"] = fit_one(stack, cfg, threads, lines.put)
        except BaseException as exc:  # handed to the generator's thread, raised there
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"fit-{stack.scene_id}", daemon=True)
    worker.start()
    while worker.is_alive() or not lines.empty():
        try:
            yield lines.get(timeout=0.2)
        except queue.Empty:
            pass
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["record"]


def cpus_per_scene(task_cpus: float, cluster_cpus: float, node_cpus: float, scenes: int) -> float:
    """CPUs (and torch threads) a fitting task asks for: `task_cpus`, or where it is 0 the
    cluster's CPUs shared among the run's scenes, at least 1 and at most one node's CPUs each."""
    if task_cpus > 0:
        return task_cpus
    return float(max(1, min(int(node_cpus), int(cluster_cpus // max(1, scenes)))))


def run(cfg: FitJobConfig) -> dict:
    import ray

    start = time.perf_counter()
    save_config(cfg, cfg.out)
    started = ensure_ray(cfg.ray_cpus)
    try:
        prefixes = focalstack.dataset_prefixes(cfg.data)
        total = 0  # scenes this run reports on, for the progress count (shard footers only)
        for prefix in prefixes:
            scenes = sum(len(focalstack.shard_scene_ids(s)) for s in focalstack.shard_uris(prefix))
            total += min(scenes, cfg.max_scenes) if cfg.max_scenes else scenes

        cpus = ray.cluster_resources().get("CPU", cfg.ray_cpus)
        node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        task_cpus = cpus_per_scene(cfg.task_cpus, cpus, node_cpus, total)
        remote_fit = ray.remote(num_cpus=task_cpus, max_retries=1, **storage.worker_runtime_env())(fit_task)
        cfg_ref = ray.put(cfg)
        pending: dict = {}  # generator of a running task -> its scene id
        records, failed, kept = [], [], 0
        # Two tasks per CPU slot in flight keeps the cluster busy without queueing every scene.
        max_in_flight = max(2, int(2 * cpus / task_cpus))

        def collect(block_until: int) -> None:
            while len(pending) > block_until:
                ready, _ = ray.wait(list(pending), num_returns=1)
                scene_id = pending[ready[0]]
                try:
                    item = ray.get(next(ready[0]))
                except StopIteration:  # cannot happen while fit_task ends on its record; never lose the scene
                    pending.pop(ready[0])
                    failed.append({"scene_id": scene_id, "error": "the fitting task ended without a record"})
                    status = f"FAILED {failed[-1]['error']}"
                except Exception as exc:  # one bad scene must not sink the job
                    pending.pop(ready[0])
                    failed.append({"scene_id": scene_id, "error": str(exc).splitlines()[-1]})
                    status = f"FAILED {failed[-1]['error']}"
                else:
                    if isinstance(item, str):  # a progress line
                        print(item, flush=True)
                        continue
                    pending.pop(ready[0])
                    records.append(item)
                    status = f"{item.get('seconds')} s"
                print(f"fit {scene_id}: {status} [{len(records) + len(failed)}/{total} scenes]", flush=True)

        for prefix in prefixes:
            for index, stack in enumerate(focalstack.read_stacks(prefix)):
                if cfg.max_scenes and index >= cfg.max_scenes:
                    break
                earlier = None if cfg.overwrite else finished_record(cfg.out, stack.scene_id)
                if earlier is not None:
                    records.append(earlier)
                    kept += 1
                    continue
                collect(max_in_flight - 1)
                pending[remote_fit.remote(stack, cfg_ref, max(1, int(task_cpus)))] = stack.scene_id
        collect(0)
    finally:
        if started:
            ray.shutdown()

    records.sort(key=lambda r: r["scene_id"])
    with_gt = [r for r in records if "splat" in r]
    summary = {
        "scenes": len(records),
        "kept_from_earlier_run": kept,
        "failed": failed,
        "mask": "gt > 0" + (f" and gt <= {cfg.eval_max_depth} m" if cfg.eval_max_depth else ""),
        "per_image_then_mean": {
            "splat": mean_metrics(r["splat"] for r in with_gt),
            "dff": mean_metrics(r["dff"] for r in with_gt),
        } if with_gt else None,
        "seconds": round(time.perf_counter() - start, 1),
        "fit": asdict(cfg.fit),
        "per_scene": records,
    }
    storage.write_bytes(storage.join(cfg.out, "fit_metrics.json"), json.dumps(summary, indent=2).encode())
    brief = {k: summary[k] for k in ("scenes", "kept_from_earlier_run", "seconds")} | {"failed": len(failed)}
    if with_gt:
        for name in ("splat", "dff"):
            m = summary["per_image_then_mean"][name]
            brief[name] = {k: round(m[k], 4) for k in ("abs_rel", "rmse", "delta1")}
    return brief
