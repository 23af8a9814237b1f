"""`dfd-ray eval --model URI --data URI --out DIR`: depth metrics of a model on held-out stacks.

Modes, on full images (the networks are fully convolutional):
    single  depth from each slice on its own (no splat, no stack), reported overall and per
            focus distance, with the error of the slice's defocus map against the GT CoC (the
            GT depth through the thin lens): how well SDNet reads blur; and where the depth error
            comes from (`metrics.side_metrics`): the blur's size or the side of the focus plane
            the depth is put on (equal blur has one depth on each side);
    fused   one depth per stack, through the lens: the depth that best explains every slice's
            CoC map (`DFDModel.fuse`: the slices' likelihoods multiplied, tempered for their
            correlation), which settles the side of the focus plane physically; and, where splats
            are available (`splats=` a store, or `fit_at_test=true`), the same with the scene
            fit's depth as one more factor.
Beside them: the classical depth-from-focus baseline and the splat depths themselves. Metrics
per image over valid GT (docs/design.md §6), then averaged; `DIR/metrics.json` and `DIR/metrics.md`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import MISSING

from dfd_ray import focalstack, storage
from dfd_ray.config import ConfigError, require, save_config
from dfd_ray.depth_from_focus import depth_from_focus
from dfd_ray.metrics import COC_KEYS, METRIC_KEYS, SIDE_KEYS, coc_metrics, depth_metrics, mean_metrics, side_metrics
from dfd_ray.models.store import load_model, model_uri
from dfd_ray.splat.fit import FitConfig, fit_scene
from dfd_ray.splat.scene import load_splats, splat_uri


@dataclass
class EvalConfig:
    model: str = ""  # model or checkpoint URI (model.pt + model.json); "" = the shipped fod500 model
    data: str = MISSING  # dataset root (its test/ is used) or a prefix
    out: str = MISSING  # folder/URI for metrics.json and metrics.md
    splats: str = ""  # splat store with the test scenes' fits ("" = none)
    fit_at_test: bool = False  # fit splats for stacks without stored ones
    fit: FitConfig = field(default_factory=FitConfig)
    max_depth: float | None = None  # metres: GT beyond is not scored (FoD500 practice: 1.5)
    max_stacks: int = 0  # 0 = all
    device: str = "cpu"  # torch device of the model

    def __post_init__(self) -> None:
        require(self.max_stacks >= 0, "max_stacks", "must be >= 0")


@torch.no_grad()
def predict_slices(model, stack: focalstack.FocalStack, prior: tuple[np.ndarray, np.ndarray] | None = None,
                   device: str = "cpu") -> dict[str, np.ndarray]:
    """Every slice predicted on its own, (S, H, W) each: coc [px] and depth [m], and its
    log_likelihood (S, K, H, W) over the model's grid; and `fused` (H, W) [m]:
    the depth that best explains all the slices' CoC maps through the lens (`DFDModel.fuse`), with the
    splat `prior` (depth, confidence) as one more factor where given."""
    images = torch.from_numpy(stack.images_float()).permute(0, 3, 1, 2).to(device)
    focus = torch.from_numpy(stack.focus_distances.astype(np.float32)).to(device)
    out = model(images, focus, stack.lens)  # one lens for every slice
    prior_args = tuple(torch.from_numpy(p.astype(np.float32)).to(device) for p in prior) if prior is not None else ()
    fused = model.fuse(out["log_likelihood"], *prior_args)
    return {"coc": out["coc"].cpu().numpy(), "depth": out["depth"].cpu().numpy(), "fused": fused.cpu().numpy(),
            "log_likelihood": out["log_likelihood"].cpu().numpy()}


def _splat_prior(cfg: EvalConfig, stack: focalstack.FocalStack) -> tuple[np.ndarray, np.ndarray] | None:
    if cfg.splats:
        try:
            _, extra = load_splats(splat_uri(cfg.splats, stack.scene_id))
            return extra["depth"], extra["confidence"]
        except FileNotFoundError:
            pass
    if cfg.fit_at_test:
        result = fit_scene(stack, cfg.fit)
        return result.depth, result.confidence
    return None


def _table(report: dict) -> str:
    keys = list(METRIC_KEYS)
    lines = ["| method | images | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]

    def row(name: str, m: dict) -> None:
        if m and m.get("images"):
            lines.append(f"| {name} | {m['images']} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")

    row("single (one slice)", report["single"]["overall"])
    for s, m in report["single"]["per_focus_distance"].items():
        row(f"single, s = {s} m", m)
    row("fused through the lens (whole stack)", report["fused"]["overall"])
    row("fused through the lens + splat fit", report["fused_splat"]["overall"])
    row("depth from focus (classical)", report["dff"]["overall"])
    row("splat fit", report["splat"]["overall"])
    lines += ["", "| single-slice defocus map | images | CoC MAE [px] | mean GT CoC [px] |", "|---|---|---|---|"]
    coc = report["single"]["coc_px"]
    for name, m in [("all slices", coc["overall"])] + [(f"s = {s} m", m) for s, m in coc["per_focus_distance"].items()]:
        lines.append(f"| {name} | {m['images']} | {m['coc_mae_px']:.3f} | {m['gt_coc_mean_px']:.3f} |")
    lines += ["", "| single-slice error source | images | AbsRel, predicted CoC on the GT side | AbsRel, GT CoC on the "
              "predicted side | wrong side (GT CoC >= 1 px) |", "|---|---|---|---|---|"]
    side = report["single"]["side"]
    for name, m in [("all slices", side["overall"])] + [(f"s = {s} m", m) for s, m in side["per_focus_distance"].items()]:
        lines.append(f"| {name} | {m['images']} | {m['abs_rel_true_side']:.4f} | {m['abs_rel_true_coc']:.4f} "
                     f"| {m['wrong_side']:.3f} |")
    return "\n".join(lines) + (f"\n\nMask: {report['mask']}. Per image, then averaged. GT CoC: GT depth through the "
                               "thin lens. Side: of the focus plane; equal blur has one depth on each side.\n")


def run(cfg: EvalConfig) -> dict:
    cfg.model = model_uri(cfg.model)
    try:
        model, meta = load_model(cfg.model, cfg.device)
        prefix = focalstack.split_prefix(cfg.data, "test")
    except (FileNotFoundError, ValueError) as exc:  # a DatasetError or a model of another architecture
        raise ConfigError(str(exc)) from None
    save_config(cfg, cfg.out)
    single, per_s, coc_per_s, side_per_s, fused, splat_fused, dff, splat = [], {}, {}, {}, [], [], [], []
    depth_range = (model.cfg.min_depth, model.cfg.max_depth)
    for index, stack in enumerate(focalstack.read_stacks(prefix)):
        if cfg.max_stacks and index >= cfg.max_stacks:
            break
        if stack.depth is None:
            continue
        gt = stack.depth
        pred = predict_slices(model, stack, device=cfg.device)
        for s, c, d in zip(stack.focus_distances, pred["coc"], pred["depth"]):
            key = f"{float(s):g}"
            m = depth_metrics(d, gt, cfg.max_depth)
            single.append(m)
            per_s.setdefault(key, []).append(m)
            gt_coc = stack.lens.coc_px(gt, float(s))
            coc_per_s.setdefault(key, []).append(coc_metrics(c, gt_coc, gt, cfg.max_depth))
            gain = stack.lens.gain_px(float(s))
            side_per_s.setdefault(key, []).append(side_metrics(d, c, gt, float(s), gain, depth_range, cfg.max_depth))
        fused.append(depth_metrics(pred["fused"], gt, cfg.max_depth))
        prior = _splat_prior(cfg, stack)
        if prior is not None:
            splat_fused.append(depth_metrics(predict_slices(model, stack, prior, cfg.device)["fused"], gt, cfg.max_depth))
            splat.append(depth_metrics(prior[0], gt, cfg.max_depth))
        dff.append(depth_metrics(depth_from_focus(stack.images_float(), stack.focus_distances)[0], gt, cfg.max_depth))
    if not single:
        raise ConfigError(f"config key 'data': no stack with GT depth under {prefix}")
    report = {
        "model": cfg.model,
        "trained_steps": meta.get("trained_steps"),
        "supervision": meta.get("supervision"),
        "data": prefix,
        "mask": "gt > 0" + (f" and gt <= {cfg.max_depth} m" if cfg.max_depth else ""),
        "single": {"overall": mean_metrics(single), "per_focus_distance": {s: mean_metrics(v) for s, v in per_s.items()},
                   "coc_px": {"overall": mean_metrics(sum(coc_per_s.values(), []), COC_KEYS),
                              "per_focus_distance": {s: mean_metrics(v, COC_KEYS) for s, v in coc_per_s.items()}},
                   "side": {"overall": mean_metrics(sum(side_per_s.values(), []), SIDE_KEYS),
                            "per_focus_distance": {s: mean_metrics(v, SIDE_KEYS) for s, v in side_per_s.items()}}},
        "fused": {"overall": mean_metrics(fused)},
        "fused_splat": {"overall": mean_metrics(splat_fused) if splat_fused else {}},
        "dff": {"overall": mean_metrics(dff)},
        "splat": {"overall": mean_metrics(splat) if splat else {}},
    }
    storage.write_bytes(storage.join(cfg.out, "metrics.json"), json.dumps(report, indent=2).encode())
    table = _table(report)
    storage.write_bytes(storage.join(cfg.out, "metrics.md"), table.encode())
    print(table)
    return {"metrics": storage.join(cfg.out, "metrics.json"), "stacks": len(fused)}
