"""Benchmark: the decode's calibration constants on held-out stacks with GT depth: the CoC error
scale's `model.scale_calibration` τ, the context window `model.context_sigma_px` σ and lens
fusion's `model.fusion_correlation` ρ.

    python jobs/bench_fusion.py --data V [--model URI] [--split test] [--stacks N] [--scale 1 1.5 ...]
                                [--context 0 8 16 ...] [--rho 0 0.5 ...]

Every slice of every stack predicted on its own with the error scale b widened by τ and its CoC
shared with its colour-alike neighbours within σ (what eval and inference do, `DFDModel.forward`),
and decoded: the single-slice AbsRel per (σ, τ). Then per ρ the slices' log-likelihoods summed and
divided by 1 + (S - 1) ρ (`DepthNet.fused_log_likelihood`), decoded and scored. The constants are
picked on validation stacks, never on the stacks a benchmark scores: σ and τ together by the
single-slice AbsRel, ρ by the fused AbsRel at those. Beside them:
- AbsRel with the FoD500 mask (GT <= 1.5 m);
- a label-free stand-in for the fused depth: the confidence-weighted mean |d - d_t| / d_t against
  each stack's classical teacher (`teachers.teacher_maps`), to show whether ρ could be chosen without
  GT (where the two columns' minima fall apart, it cannot).
Without `--model`: the shipped model.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from dfd_ray import focalstack
from dfd_ray.evaluate import predict_slices
from dfd_ray.metrics import FOD500_MAX_DEPTH_M, depth_metrics
from dfd_ray.models.store import load_model
from dfd_ray.teachers import teacher_maps


def teacher_disagreement(depth: np.ndarray, teacher_depth: np.ndarray, teacher_conf: np.ndarray) -> float:
    """Confidence-weighted mean of |d - d_t| / d_t over one image (metres); NaN where the teacher trusts no pixel."""
    total = float(teacher_conf.sum())
    if total <= 0:
        return float("nan")
    return float((np.abs(depth - teacher_depth) / np.maximum(teacher_depth, 1e-3) * teacher_conf).sum() / total)


def calibration_scores(model, stacks, scales: list[float], rhos: list[float],
                       contexts: list[float] | None = None) -> dict[tuple[float, float], dict]:
    """Per (σ, τ), σ in `contexts` (default: the model's own) and τ in `scales`: the mean
    single-slice AbsRel (all GT, GT <= 1.5 m) over every slice of `stacks`, and per ρ in `rhos`
    the fused depth's (all GT, GT <= 1.5 m, teacher disagreement). Leaves `model.cfg` at the last
    σ and τ."""
    depthnet = model.depthnet
    teachers = [teacher_maps(stack)[:2] for stack in stacks]
    scores: dict[tuple[float, float], dict] = {}
    for sigma, tau in ((c, t) for c in (contexts or [model.cfg.context_sigma_px]) for t in scales):
        model.cfg = replace(model.cfg, scale_calibration=tau, context_sigma_px=sigma)
        single, fused = [], {r: [] for r in rhos}
        for stack, (teacher_depth, teacher_conf) in zip(stacks, teachers):
            with torch.no_grad():
                out = predict_slices(model, stack)
            single += [(depth_metrics(d, stack.depth)["abs_rel"],
                        depth_metrics(d, stack.depth, FOD500_MAX_DEPTH_M)["abs_rel"]) for d in out["depth"]]
            log_likelihood = torch.from_numpy(out["log_likelihood"])
            for r in rhos:
                with torch.no_grad():
                    depth = depthnet.decode(depthnet.fused_log_likelihood(log_likelihood, r)).numpy()
                fused[r].append((depth_metrics(depth, stack.depth)["abs_rel"],
                                 depth_metrics(depth, stack.depth, FOD500_MAX_DEPTH_M)["abs_rel"],
                                 teacher_disagreement(depth, teacher_depth, teacher_conf)))
        scores[(sigma, tau)] = {
            **dict(zip(("abs_rel", "abs_rel_masked"), np.nanmean(np.array(single), axis=0))),
            "fused": {r: dict(zip(("abs_rel", "abs_rel_masked", "teacher"), np.nanmean(np.array(v), axis=0)))
                      for r, v in fused.items()}}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset root or prefix (its stacks need GT depth)")
    parser.add_argument("--model", default="", help="model URI (default: the shipped model)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--stacks", type=int, default=0, help="0 = all")
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0, 1.25, 1.5, 1.75, 2.0])
    parser.add_argument("--context", type=float, nargs="+", default=None,
                        help="context sigmas, px (default: the model's own)")
    parser.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0])
    args = parser.parse_args()
    if args.context is not None and not all(c >= 0 for c in args.context):
        parser.error(f"--context: values must be >= 0, got {args.context}")
    if not all(0.0 <= r <= 1.0 for r in args.rho):
        parser.error(f"--rho: values must lie in [0, 1], got {args.rho}")
    if not all(t > 0 for t in args.scale):
        parser.error(f"--scale: values must be > 0, got {args.scale}")
    model = load_model(args.model)[0]
    own = (model.cfg.scale_calibration, model.cfg.context_sigma_px, model.cfg.fusion_correlation)
    prefix = focalstack.split_prefix(args.data, args.split)
    stacks = [s for i, s in enumerate(focalstack.read_stacks(prefix))
              if (not args.stacks or i < args.stacks) and s.depth is not None and len(s.focus_distances) > 1]
    if not stacks:
        raise SystemExit(f"--data: no stack of two or more slices with GT depth under {prefix}")
    scores = calibration_scores(model, stacks, args.scale, args.rho, args.context)
    print(f"{len(stacks)} stacks of {prefix}; model {args.model or 'shipped'} "
          f"(its own scale {own[0]:g}, context {own[1]:g} px, rho {own[2]:g})")
    print(f"{'context':>7} {'scale':>6} {'single':>8} {'<=1.5 m':>8}   fused AbsRel at rho = " + " ".join(f"{r:6.3f}" for r in args.rho))
    for (sigma, tau), m in scores.items():
        print(f"{sigma:7.3g} {tau:6.3f} {m['abs_rel']:8.4f} {m['abs_rel_masked']:8.4f}   {'':22}" + " ".join(f"{m['fused'][r]['abs_rel']:6.4f}" for r in args.rho))
    sigma, tau = min(scores, key=lambda k: scores[k]["abs_rel"])
    fused = scores[(sigma, tau)]["fused"]
    print(f"lowest single-slice AbsRel at context = {sigma:g} px, scale = {tau:g} ({scores[(sigma, tau)]['abs_rel']:.5f}); fused at those:")
    print(f"{'rho':>6} {'AbsRel':>8} {'<=1.5 m':>8} {'vs teacher':>11}")
    for r, m in fused.items():
        print(f"{r:6.3f} {m['abs_rel']:8.4f} {m['abs_rel_masked']:8.4f} {m['teacher']:11.4f}")
    best = min(fused, key=lambda r: fused[r]["abs_rel"])
    label_free = min(fused, key=lambda r: fused[r]["teacher"])
    print(f"lowest fused AbsRel at rho = {best:g} ({fused[best]['abs_rel']:.5f}); lowest teacher disagreement at rho = {label_free:g}")


if __name__ == "__main__":
    main()
