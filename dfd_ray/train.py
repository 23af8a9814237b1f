"""`dfd-ray train --data URI --out URI`: self-supervised SDNet + DepthNet in a Ray Train group.

The whole step is `training_step` (plain PyTorch plus the renderer pool); `train_loop_per_worker`
is the function handed to `TorchTrainer`; `run` builds the pool, the dataset and the trainer.
Checkpoints hold model.pt / model.json (so any checkpoint is a model URI; with `ema_decay` > 0 the
weights are the moving average of the optimiser's, which are then kept in online.pt), optim.pt,
state.json (step, metric history) and the training-curve and sample PNGs.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import MISSING

from dfd_ray import focalstack, imaging, interrupts, losses, optics, storage, streaming, teachers
from dfd_ray.config import ConfigError, require, require_choice, save_config
from dfd_ray.models import DFDModel, ModelConfig, save_model
from dfd_ray.models.store import load_model, read_meta
from dfd_ray.ray_session import ensure_ray
from dfd_ray.services.pool import RemoteRenderLoss, RendererPool
from dfd_ray.services.renderer import RendererPoolConfig


@dataclass
class LossWeights:
    """Weights of the loss terms; 0 switches a term off (and with render and prior both 0 no
    renderer pool is started, so no scene needs a splat fit)."""

    teacher_coc: float = 1.0  # SDNet's CoC vs the teacher's through the thin lens (pixels), confidence-weighted
    teacher_scale: float = 0.1  # Laplace likelihood of SDNet's predicted CoC error scale
    side: float = 0.2  # the posterior's side of the focus plane vs the teacher's (cross-entropy; trains the side net)
    lens_coc: float = 0.1  # Siamese: each slice's CoC vs the other slices' depths (pixels)
    lens_depth: float = 0.05  # Siamese: one scene, one depth (log metres)
    render: float = 0.0  # slice re-rendered from the scene's splats with the predicted CoC (renderer pool)
    prior: float = 0.0  # depth pulled to the splat depth where the fit is confident (renderer pool)
    smooth: float = 0.01  # edge-aware smoothness of log depth and CoC


@dataclass
class TrainConfig:
    data: str = MISSING  # focal-stack dataset root (its train/ is used) or a train prefix
    out: str = MISSING  # run folder/URI: checkpoints, model/, plots
    splats: str = ""  # splat store (dfd-ray fit's <out>/splats): renderer pool, and teachers where fitted; "" = <out>/splats
    supervision: str = "self"  # "self" (teachers from the stack), or "gt" (GT depth as the teacher: an upper bound)
    depth_loss: str = "log"  # error of depth vs the splat prior: "log" (L1 of log depth) or "rel" (AbsRel)
    steps: int = 6000  # optimiser steps in all; a resumed run trains on to this step
    batch_size: int = 4  # stacks per worker per step
    crop: int = 48  # pixels, native resolution
    crops_per_pass: int = 1  # random crops per stack per pass over the data (a pass restarts Ray Data: seconds)
    lr: float = 1e-3  # Adam's learning rate, until the first step of lr_decay_at
    lr_decay_at: list[int] = field(default_factory=lambda: [4800])  # steps after which the rate is multiplied by lr_decay
    lr_decay: float = 0.1  # factor per step of lr_decay_at; a resumed run follows the schedule of its config
    ema_decay: float = 0.0  # > 0: checkpoints serve an exponential moving average of the weights (e.g. 0.999)
    seed: int = 0  # crops, flips and data order; another seed on resume draws new crops
    report_every: int = 50  # steps between metric reports (reports block; docs/design.md)
    checkpoint_every: int = 500  # steps between checkpoints (the last 3 are kept)
    num_workers: int = 1  # Ray Train data-parallel workers (DDP), each reading its own shard of the data
    use_gpu: bool = False  # one GPU per worker (NCCL); False trains on CPUs (gloo)
    worker_cpus: float = 2.0  # per training worker (torch threads: its whole part); fractional on a laptop
    max_failures: int = 2  # worker-group restarts from the latest checkpoint
    ray_cpus: int = 4  # logical CPUs of an embedded local Ray (ignored on a cluster)
    run_name: str = "dfd"  # a run with this name under `out` resumes (Ray Train)
    init: str = ""  # a model URI to start from (fine-tuning, e.g. the shipped model on your own stacks); "" = random
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    renderer: RendererPoolConfig = field(default_factory=lambda: RendererPoolConfig(num_cpus=0.25))

    def __post_init__(self) -> None:
        require_choice("supervision", self.supervision, ["self", "gt"])
        require_choice("depth_loss", self.depth_loss, ["rel", "log"])
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(self.steps >= 1 and self.batch_size >= 1 and self.crop >= 8, "steps", "steps, batch_size >= 1, crop >= 8")
        require(self.crops_per_pass >= 1, "crops_per_pass", f"must be >= 1, got {self.crops_per_pass}")
        require(self.report_every >= 1 and self.checkpoint_every >= 1, "report_every", "must be >= 1")
        require(self.num_workers >= 1 and self.worker_cpus > 0, "num_workers", "need >= 1 worker with CPUs > 0")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 < self.lr_decay <= 1, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        require(all(s >= 1 for s in self.lr_decay_at), "lr_decay_at", f"steps must be >= 1, got {self.lr_decay_at}")
        require(all(v >= 0 for v in self.loss.__dict__.values()) and any(v > 0 for v in self.loss.__dict__.values()),
                "loss", f"weights must be >= 0 and one at least > 0, got {self.loss}")
        if not self.renderer.splat_store and self.out != MISSING:
            self.renderer.splat_store = self.splats or storage.join(self.out, "splats")
        if not self.renderer.data and self.data != MISSING:
            self.renderer.data = self.data

    def uses_renderer(self) -> bool:
        """Whether a term needs the renderer pool (and so a splat fit of every training scene)."""
        return self.supervision == "self" and (self.loss.render > 0 or self.loss.prior > 0)


# --- the step -----------------------------------------------------------------------------------

SIDE_MIN_COC_PX = 0.5  # below this teacher CoC both sides of the focus plane blur alike: the side is not taught


def _flip(maps: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Apply (or undo: flips are their own inverse) each sample's flips to maps (B, ..., H, W)."""
    out = maps.clone()
    for b in range(maps.shape[0]):
        dims = [d for d, f in zip((-2, -1), flipped[b].tolist()) if f]
        if dims:
            out[b] = torch.flip(maps[b], dims)
    return out


def teacher_targets(depth: torch.Tensor, conf: torch.Tensor, focus: torch.Tensor,
                    lens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A teacher depth map (B, 1, h, w) in metres (0 = none) and its confidence → per slice (B, S, h, w):
    the target CoC (px, through `optics.coc_px`), the side (1 in front of the focus plane), and the
    weights of the CoC and side terms."""
    valid = depth > 0
    d = torch.where(valid, depth, torch.ones_like(depth))
    s = focus[:, :, None, None]
    coc = optics.coc_px(d, s, *(lens[k][:, :, None, None] for k in ("focal_length", "f_number", "pixel_size")))
    weight = conf * valid.to(conf.dtype)
    return {"coc": coc, "near": (d < s).to(d.dtype), "weight": weight.expand_as(coc),
            "side_weight": weight * (coc >= SIDE_MIN_COC_PX).to(coc.dtype)}


def model_module(model: torch.nn.Module) -> DFDModel:
    """The DFDModel inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def training_step(model: torch.nn.Module, batch: dict, cfg: TrainConfig, pool: RendererPool | None,
                  ) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
    """One step's loss, its logged terms and the predictions (coc, depth: (B, S, h, w))."""
    images = batch["images"].float()  # (B, S, 3, h, w) sRGB in [0, 1]
    b, s, _, h, w = images.shape
    focus = batch["focus_distances"].float()  # (B, S)
    lens = {k: batch[k].float()[:, None].expand(b, s) for k in ("focal_length", "f_number", "pixel_size")}
    gain = optics.coc_gain_px(focus, lens["focal_length"], lens["f_number"], lens["pixel_size"])
    flat = images.reshape(b * s, 3, h, w)
    out = model(flat, focus.reshape(-1), *(lens[k].reshape(-1) for k in ("focal_length", "f_number", "pixel_size")))
    coc, depth = out["coc"].reshape(b, s, h, w), out["depth"].reshape(b, s, h, w)

    if cfg.supervision == "gt":
        gt = batch["depth"].float()
        teacher = teacher_targets(gt, (gt > 0).float(), focus, lens)
    else:
        teacher = teacher_targets(batch["teacher_depth"].float(), batch["teacher_conf"].float(), focus, lens)
    terms: dict[str, torch.Tensor] = {}
    terms["teacher_coc"], terms["teacher_scale"] = losses.coc_teacher(
        coc, out["coc_scale"].reshape(b, s, h, w), teacher["coc"], teacher["weight"])
    two_sided = model_module(model).depthnet.has_both_sides(focus.reshape(-1)).reshape(b, s, 1, 1).float()
    terms["side"] = losses.side_teacher(out["near_logit"].reshape(b, s, h, w), teacher["near"],
                                        teacher["side_weight"] * two_sided)
    terms["lens_coc"], terms["lens_depth"] = losses.thin_lens_consistency(coc, depth, focus, gain)
    terms["smooth"] = (losses.edge_aware_smoothness(torch.log(out["depth"]), flat)
                       + losses.edge_aware_smoothness(out["coc"] / model_module(model).cfg.max_coc_px, flat))

    service_seconds = 0.0  # time in renderer-service round trips, for the throughput report
    if pool is not None:
        scene_ids = streaming.scene_ids(batch)
        windows = [tuple(int(v) for v in box) for box in batch["crop_box"]]
        t0 = time.perf_counter()
        if cfg.loss.prior > 0:
            priors = pool.priors_batch([{"scene_id": sid, "window": win} for sid, win in zip(scene_ids, windows)])
            prior_depth = _flip(torch.from_numpy(np.stack([d for d, _ in priors])), batch["flipped"])  # (B, h, w)
            prior_conf = _flip(torch.from_numpy(np.stack([c for _, c in priors])), batch["flipped"])
            terms["prior"] = losses.splat_prior(depth, prior_depth[:, None], prior_conf[:, None], cfg.depth_loss)
        if cfg.loss.render > 0:
            # The renderer sees the sensor as it is: undo the crop's flips on maps and targets.
            targets = torch.from_numpy(imaging.srgb_to_linear(images.permute(0, 1, 3, 4, 2).numpy()))
            targets = _flip(targets.permute(0, 1, 4, 2, 3), batch["flipped"]).permute(0, 1, 3, 4, 2)
            terms["render"] = RemoteRenderLoss.apply(
                _flip(coc, batch["flipped"]).reshape(b * s, h, w), pool,
                [sid for sid in scene_ids for _ in range(s)], focus.reshape(-1).tolist(),
                targets.reshape(b * s, h, w, 3), [win for win in windows for _ in range(s)],
            )
        service_seconds = time.perf_counter() - t0
    weights = cfg.loss.__dict__
    loss = sum(weights[k] * v for k, v in terms.items() if weights[k] > 0)
    logged = {k: float(v.detach()) for k, v in terms.items()} | {"time_service_s": service_seconds}
    if batch["has_depth"].any():  # monitoring only; never a training signal in self-supervision
        gt = batch["depth"].float().expand(b, s, h, w)
        valid = gt > 0
        logged["monitor_abs_rel"] = float(((depth.detach() - gt).abs() / gt.clamp_min(1e-6))[valid].mean())
        gt_coc = teacher_targets(batch["depth"].float(), torch.ones_like(gt[:, :1]), focus, lens)["coc"]
        logged["monitor_coc_mae_px"] = float((coc.detach() - gt_coc).abs()[valid].mean())
    return loss, logged, {"coc": coc, "depth": depth}


# --- plots ----------------------------------------------------------------------------------------

def _plots(history: list[dict], batch: dict, outputs: dict, folder: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted({k for h in history for k in h if k not in ("step", "seconds", "resumed_from") and not k.startswith("time_")}):
        ax.plot(steps, [h.get(key, np.nan) for h in history], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.set_title("training curves")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "training_curve.png"), dpi=90)
    plt.close(fig)

    s = batch["images"].shape[1]
    rows = min(s, 3)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), squeeze=False)
    gt = batch["depth"][0, 0].numpy() if batch["has_depth"][0] else None
    depth = outputs["depth"][0].detach().numpy()
    lo, hi = float(np.nanmin(depth)), float(np.nanmax(depth))
    if gt is not None and (gt > 0).any():
        lo, hi = min(lo, float(gt[gt > 0].min())), max(hi, float(gt.max()))
    for r in range(rows):
        k = r * (s - 1) // max(rows - 1, 1)
        panels = [(batch["images"][0, k].permute(1, 2, 0).numpy(), f"slice s={float(batch['focus_distances'][0, k]):.2f} m", None),
                  (outputs["coc"][0, k].detach().numpy(), "predicted CoC [px]", "magma"),
                  (depth[k], "predicted depth [m]", "viridis"),
                  (gt, "GT depth [m]" if gt is not None else "no GT depth", "viridis")]
        for c, (img, title, cmap) in enumerate(panels):
            ax = axes[r, c]
            ax.axis("off")
            ax.set_title(title, fontsize=8)
            if img is None:
                continue
            kw = {"vmin": lo, "vmax": hi} if "depth" in title else {}
            shown = ax.imshow(np.clip(img, 0, 1) if cmap is None else img, cmap=cmap, **kw)
            if cmap is not None:
                fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "sample_prediction.png"), dpi=90)
    plt.close(fig)


# --- checkpoints ----------------------------------------------------------------------------------

class WeightAverage:
    """Exponential moving average of a model's weights: what checkpoints serve as the model.

    Meant for the late swings of Adam's weights (held-out AbsRel moved by 0.1-0.2 between reports
    at a constant rate, docs/benchmarks.md); measured only on a run that never left the
    predict-a-constant plateau, where it made no difference (docs/benchmarks.md). The decay
    warms up as min(decay, (1 + n) / (10 + n)) after n updates, so a short run is not served its
    initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - decay)
        for served, online in zip(self.model.buffers(), model.buffers()):  # batch-norm statistics: the latest
            served.copy_(online)


ONLINE_WEIGHTS = "online.pt"  # the optimiser's own weights, where model.pt holds the served average


def save_training_state(folder: str, model: DFDModel, optimiser: torch.optim.Optimizer, step: int,
                        history: list[dict], supervision: str, average: WeightAverage | None = None) -> None:
    """model.pt + model.json (a loadable model: the weight average where there is one, with the
    optimiser's weights in online.pt beside it), optim.pt and state.json into `folder`."""
    served = average.model if average is not None else model
    save_model(served, folder, {"trained_steps": step, "supervision": supervision,
                                "weights": "ema" if average is not None else "online"})
    if average is not None:
        torch.save(model.state_dict(), os.path.join(folder, ONLINE_WEIGHTS))
    torch.save(optimiser.state_dict(), os.path.join(folder, "optim.pt"))
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump({"step": step, "history": history,
                   "ema_updates": average.updates if average is not None else 0}, f)


def load_training_state(folder: str, model: DFDModel, optimiser: torch.optim.Optimizer,
                        average: WeightAverage | None = None) -> tuple[int, list[dict]]:
    """Restore model, optimiser and weight average in place (weights_only loads); returns (step, history).

    A checkpoint without online.pt (written without weight averaging) holds the optimiser's
    weights in model.pt; an average switched on at resume starts from them.
    """
    online = os.path.join(folder, ONLINE_WEIGHTS)
    served = torch.load(os.path.join(folder, "model.pt"), weights_only=True)
    model.load_state_dict(torch.load(online, weights_only=True) if os.path.exists(online) else served)
    optimiser.load_state_dict(torch.load(os.path.join(folder, "optim.pt"), weights_only=True))
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    if average is not None:
        average.model.load_state_dict(served)
        average.updates = int(state.get("ema_updates", 0))
    return state["step"], state["history"]


def learning_rate(cfg: TrainConfig, steps_done: int) -> float:
    """The rate of the step after `steps_done` steps: lr, times lr_decay for each of lr_decay_at passed.

    A function of the step, set before every update, so that a resumed or extended run follows the
    schedule of its config; the rate stored in a checkpoint's optimiser state is not used.
    """
    return cfg.lr * cfg.lr_decay ** sum(steps_done >= s for s in cfg.lr_decay_at)


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
            loss, logged, outputs = training_step(ddp_model, batch, cfg, pool)
            if not torch.isfinite(loss):  # stop before a bad step reaches the weights and the checkpoints
                raise FloatingPointError(f"worker {rank}, step {step + 1}: the loss is {float(loss)}; terms {logged}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(cfg, step)
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
                        _plots(history, batch, outputs, folder)
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
    depths = np.concatenate([st.depth[st.depth > 0] for st in focalstack.read_stacks(prefix) if st.depth is not None])
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
        try:
            read_meta(cfg.init)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"config key 'init': {exc}") from None
    if stacks < cfg.num_workers * cfg.batch_size:
        raise ConfigError(
            f"config key 'num_workers': {prefix} holds {stacks} training stack(s); {cfg.num_workers} workers x "
            f"batch_size {cfg.batch_size} need at least {cfg.num_workers * cfg.batch_size} (each worker reads its own)"
        )
    if not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        # Ray 2.60's Parquet reader runs a file-listing task that always asks for one whole CPU
        # (streaming.StreamConfig): an embedded Ray with less than that left over hangs silently.
        held = cfg.num_workers * cfg.worker_cpus + (cfg.renderer.num_actors * cfg.renderer.num_cpus
                                                    if cfg.uses_renderer() else 0.0)
        if cfg.ray_cpus - held < 1:
            raise ConfigError(
                f"config key 'ray_cpus': the embedded Ray's {cfg.ray_cpus} CPU(s) minus the {held:g} that training "
                f"workers{' and renderer actors' if cfg.uses_renderer() else ''} hold leave less than the 1 CPU its "
                "data pipeline needs: raise ray_cpus (logical CPUs may exceed the cores) or lower worker_cpus")
    save_config(cfg, cfg.out)
    started = ensure_ray(cfg.ray_cpus)
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
        if cfg.uses_renderer():
            pool = RendererPool(cfg.renderer)
        dataset = streaming.ray_dataset(prefix, crop=cfg.crop, seed=cfg.seed, crops_per_pass=cfg.crops_per_pass,
                                        teachers=cfg.supervision == "self")
        storage_path, storage_fs = _storage(cfg.out)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg, "pool": pool, "prior_depths": prior_depths},
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
