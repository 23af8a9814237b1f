"""`dfd-ray train --data URI --out URI`: self-supervised SDNet + DepthNet in a Ray Train group.

The Ray side of training: `train_loop_per_worker` is the function handed to `TorchTrainer`, and
`run` builds the renderer pool (when a term needs it), the dataset and the trainer. The step
itself is `dfd_ray.train_step.training_step` (plain PyTorch), what a checkpoint holds is
`dfd_ray.train_state`, and its plots `dfd_ray.train_plots`.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from omegaconf import MISSING

from dfd_ray import focalstack, interrupts, storage, streaming, teachers
from dfd_ray.config import ConfigError, require, require_choice, save_config
from dfd_ray.models import DFDModel, ModelConfig, save_model
from dfd_ray.models.store import checked_model_uri, load_model
from dfd_ray.ray_session import ensure_ray
from dfd_ray.services.pool import RendererPool
from dfd_ray.services.renderer import RendererPoolConfig
from dfd_ray.train_plots import save_plots
from dfd_ray.train_state import WeightAverage, learning_rate, load_training_state, save_training_state
from dfd_ray.train_step import LossWeights, training_step


@dataclass
class TrainConfig:
    data: str = MISSING  # focal-stack dataset root (its train/ is used) or a train prefix
    out: str = MISSING  # run folder/URI: checkpoints, model/, plots
    splats: str = ""  # splat store (dfd-ray fit's <out>/splats): renderer pool, and teachers where fitted; "" = <out>/splats
    supervision: str = "self"  # "self" (teachers from the stack), or "gt" (GT depth as the teacher: an upper bound)
    depth_loss: str = "log"  # error of depth vs the splat prior: "log" (L1 of log depth) or "rel" (AbsRel)
    steps: int = 9000  # optimiser steps in all; a resumed run trains on to this step
    batch_size: int = 4  # stacks per worker per step
    crop: int = 48  # pixels, native resolution
    crops_per_pass: int = 1  # random crops per stack per pass over the data (a pass restarts Ray Data: seconds)
    lr: float = 1e-3  # Adam's learning rate at the start (the step schedule keeps it until the first step of lr_decay_at)
    lr_decay_at: list[int] = field(default_factory=lambda: [7200])  # steps after which the rate is multiplied by lr_decay
    lr_decay: float = 0.1  # factor per step of lr_decay_at; a resumed run follows the schedule of its config
    lr_schedule: str = "step"  # "step" (lr_decay_at, lr_decay) or "cosine" (lr annealed to 0 over `steps`)
    ema_decay: float = 0.0  # > 0: checkpoints serve an exponential moving average of the weights (e.g. 0.999)
    seed: int = 0  # crops, flips and data order; another seed on resume draws new crops
    report_every: int = 50  # steps between metric reports (reports block; docs/design.md)
    checkpoint_every: int = 500  # steps between checkpoints (the last 3 are kept)
    num_workers: int = 1  # Ray Train data-parallel workers (DDP), each reading its own shard of the data
    use_gpu: bool = False  # one GPU per worker (NCCL); False trains on CPUs (gloo)
    worker_cpus: float = 2.0  # per training worker (torch threads: its whole part); fractional on a laptop
    max_failures: int = 2  # worker-group restarts from the latest checkpoint
    ray_cpus: int = 4  # logical CPUs of an embedded local Ray (ignored on a cluster)
    object_store_mb: int = 2000  # an embedded local Ray's object store: a pass of decoded crops should fit (docs/design.md §5)
    run_name: str = "dfd"  # a run with this name under `out` resumes (Ray Train)
    init: str = ""  # a model URI to start from (fine-tuning, e.g. the shipped model on your own stacks); "" = random
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    renderer: RendererPoolConfig = field(default_factory=lambda: RendererPoolConfig(num_cpus=0.25))

    def __post_init__(self) -> None:
        require_choice("supervision", self.supervision, ["self", "gt"])
        require_choice("depth_loss", self.depth_loss, ["rel", "log"])
        require_choice("lr_schedule", self.lr_schedule, ["step", "cosine"])
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(self.steps >= 1 and self.batch_size >= 1 and self.crop >= 8, "steps", "steps, batch_size >= 1, crop >= 8")
        require(self.crops_per_pass >= 1, "crops_per_pass", f"must be >= 1, got {self.crops_per_pass}")
        require(self.report_every >= 1 and self.checkpoint_every >= 1, "report_every", "must be >= 1")
        require(self.num_workers >= 1 and self.worker_cpus > 0, "num_workers", "need >= 1 worker with CPUs > 0")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.object_store_mb >= 100, "object_store_mb", f"must be >= 100 MB, got {self.object_store_mb}")
        require(0 < self.lr_decay <= 1, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        require(all(s >= 1 for s in self.lr_decay_at), "lr_decay_at", f"steps must be >= 1, got {self.lr_decay_at}")
        require(all(v >= 0 for v in self.loss.__dict__.values()) and any(v > 0 for v in self.loss.__dict__.values()),
                "loss", f"weights must be >= 0 and one at least > 0, got {self.loss}")

    def renderer_config(self) -> RendererPoolConfig:
        """The pool's config as the run uses it: its splat store and data default to the run's
        (`splats`, else `<out>/splats`; `data`). The config itself stays as given (and as saved)."""
        return replace(self.renderer, splat_store=self.renderer.splat_store or self.splats
                                   or storage.join(self.out, "splats"), data=self.renderer.data or self.data)

    def uses_renderer(self) -> bool:
        """Whether a term needs the renderer pool (and so a splat fit of every training scene)."""
        return self.supervision == "self" and (self.loss.render > 0 or self.loss.prior > 0)


# --- the worker loop ------------------------------------------------------------------------------

def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = config["cfg"]
    pool: RendererPool | None = config["pool"]
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, round(cfg.worker_cpus)))
    torch.manual_seed(cfg.seed)  # identical initial weights on every worker
    if cfg.init:  # its architecture, weights and batch-norm statistics; the prior is this data's (below)
        model = load_model(cfg.init)[0].train()
    else:
        model = DFDModel(cfg.model)
    model.depthnet.set_prior(torch.from_numpy(config["prior_depths"]))  # a checkpoint's prior replaces it below
    gains = torch.from_numpy(config["gain_range"])
    model.set_gain_range(torch.cat([gains, model.gain_range]) if cfg.init else gains)  # fine-tuning widens it
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    step, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            step, history = load_training_state(folder, model, optimiser, average)
    resumed_from = step  # 0 for a fresh run; the checkpoint's step after a restart or a resume
    ddp_model = ray.train.torch.prepare_model(model, parallel_strategy="ddp" if cfg.num_workers > 1 else None)
    shard = ray.train.get_dataset_shard("train")
    sums: dict[str, float] = {}
    count, started = 0, time.perf_counter()
    while step < cfg.steps:
        batches = 0
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True):
            batches += 1
            t0 = time.perf_counter()
            loss, logged, outputs = training_step(ddp_model, batch, cfg.loss, supervision=cfg.supervision,
                                                   depth_loss=cfg.depth_loss, renderer=pool)
            if not torch.isfinite(loss):  # stop before a bad step reaches the weights and the checkpoints
                raise FloatingPointError(f"worker {rank}, step {step + 1}: the loss is {float(loss)}; terms {logged}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(cfg.lr, cfg.lr_decay_at, cfg.lr_decay, step,
                                            cosine_steps=cfg.steps if cfg.lr_schedule == "cosine" else 0)
            optimiser.step()
            if average is not None:
                average.update(model)
            logged["lr"] = optimiser.param_groups[0]["lr"]
            logged["time_step_s"] = time.perf_counter() - t0
            step += 1
            count += 1
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % cfg.report_every and step % cfg.checkpoint_every and step != cfg.steps:
                continue
            metrics = {"step": step, "seconds": round(time.perf_counter() - started, 2), "resumed_from": resumed_from,
                       **{k: v / count for k, v in sums.items()}}
            history.append(metrics)
            sums, count = {}, 0
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                with tempfile.TemporaryDirectory() as folder:
                    if rank == 0:
                        save_training_state(folder, model, optimiser, step, history, cfg.supervision, average)
                        save_plots(history, batch, outputs, folder)
                    ckpt = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
                    ray.train.report(metrics, checkpoint=ckpt)
            else:
                ray.train.report(metrics)
            if step >= cfg.steps:
                break
        if batches == 0:  # an empty shard would spin here while the other workers wait in DDP
            raise RuntimeError(f"worker {rank}: an epoch of the training data yielded no batch of {cfg.batch_size}")


# --- the driver -----------------------------------------------------------------------------------

def gt_depths(prefix: str, max_pixels: int = 2_000_000, seed: int = 0) -> np.ndarray:
    """A sample of the valid GT depths of a prefix (metres): the depth prior of `supervision=gt`."""
    found = [st.depth[st.depth > 0] for st in focalstack.read_stacks(prefix) if st.depth is not None]
    depths = np.concatenate(found) if found else np.zeros(0, np.float32)
    if not depths.size:
        raise ConfigError(f"config key 'supervision': 'gt' needs GT depth, and {prefix} has none")
    return np.random.default_rng(seed).choice(depths, size=min(max_pixels, depths.size), replace=False)


def _storage(out: str) -> tuple[str, object | None]:
    if storage.is_local(out):
        return os.path.abspath(out.removeprefix("file://")), None
    fs, path = storage.arrow_filesystem(out)
    return path, fs


def run(cfg: TrainConfig) -> dict:
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    try:
        prefix = focalstack.split_prefix(cfg.data, "train")  # fails here, before any cluster work
        stacks = sum(focalstack.read_metadata(shard).num_rows for shard in focalstack.shard_uris(prefix))
    except focalstack.DatasetError as exc:
        raise ConfigError(f"config key 'data': {exc}") from None
    if cfg.init:
        cfg = replace(cfg, init=checked_model_uri(cfg.init, "init"))
    if stacks < cfg.num_workers * cfg.batch_size:
        raise ConfigError(
            f"config key 'num_workers': {prefix} holds {stacks} training stack(s); {cfg.num_workers} workers x "
            f"batch_size {cfg.batch_size} need at least {cfg.num_workers * cfg.batch_size} (each worker reads its own)"
        )
    if not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        # The data pipeline's tasks ask for CPUs too: an embedded Ray whose CPUs the workers hold
        # never schedules them and hangs silently.
        stream = streaming.StreamConfig()
        need = max(stream.map_num_cpus, stream.read_num_cpus)
        held = cfg.num_workers * cfg.worker_cpus + (cfg.renderer.num_actors * cfg.renderer.num_cpus
                                                    if cfg.uses_renderer() else 0.0)
        if cfg.ray_cpus - held < need:
            raise ConfigError(
                f"config key 'ray_cpus': the embedded Ray's {cfg.ray_cpus} CPU(s) minus the {held:g} that training "
                f"workers{' and renderer actors' if cfg.uses_renderer() else ''} hold leave less than the {need:g} CPU "
                "a data task needs: raise ray_cpus (logical CPUs may exceed the cores) or lower worker_cpus")
    save_config(cfg, cfg.out)
    started = ensure_ray(cfg.ray_cpus, cfg.object_store_mb)
    pool = None
    try:
        if cfg.supervision == "self":
            taught = teachers.ensure_teachers(prefix, cfg.splats)
            if taught["computed"]:
                print(f"teachers: {taught['computed']} shard sidecar(s), {taught['stacks']} stacks "
                      f"({taught['from_splats']} from splat fits) in {taught['seconds']} s", flush=True)
            prior_depths = teachers.teacher_depths(prefix, seed=cfg.seed)
        else:
            prior_depths = gt_depths(prefix)
        gains = focalstack.lens_gains_px(prefix)
        gain_range = np.array([gains.min(), gains.max()])
        if cfg.uses_renderer():
            pool = RendererPool(cfg.renderer_config())
        dataset = streaming.ray_dataset(prefix, crop=cfg.crop, seed=cfg.seed, crops_per_pass=cfg.crops_per_pass,
                                        max_tasks=2 * cfg.num_workers, teachers=cfg.supervision == "self")
        storage_path, storage_fs = _storage(cfg.out)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg, "pool": pool, "prior_depths": prior_depths, "gain_range": gain_range},
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.worker_cpus, **({"GPU": 1} if cfg.use_gpu else {})}),
            run_config=ray.train.RunConfig(
                name=cfg.run_name, storage_path=storage_path, storage_filesystem=storage_fs,
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3)),
            datasets={"train": dataset},
        )
        result = interrupts.call_beside(trainer.fit)
        model_uri = storage.join(cfg.out, "model")
        with result.checkpoint.as_directory() as folder:
            model, meta = load_model(folder)
            save_model(model, model_uri, {k: v for k, v in meta.items() if k != "model"})
            for name in ("training_curve.png", "sample_prediction.png", "state.json"):
                storage.write_bytes(storage.join(cfg.out, name), open(os.path.join(folder, name), "rb").read())
        final = result.metrics or {}
        renderer_stats = pool.stats() if pool is not None else []
    finally:
        if pool is not None:
            pool.shutdown()
        if started:
            import ray

            ray.shutdown()
    return {"model": model_uri, "checkpoint": result.checkpoint.path, "final_metrics": final,
            "renderer": [{k: s[k] for k in ("requests", "hits", "loads", "fits", "latency_ms")} for s in renderer_stats]}
