"""Benchmark: lens fusion's depth against the fusion correlation ρ, on held-out stacks with GT depth.

    python jobs/bench_fusion.py --data V [--model URI] [--split test] [--stacks N] [--rho 0 0.25 0.5 ...]

Every slice of every stack predicted on its own; the slices' log-likelihoods summed and divided
by 1 + (S - 1) ρ (`DepthNet.fused_log_likelihood`), decoded, and scored per ρ:
- AbsRel against GT, over all GT and with the FoD500 mask (GT <= 1.5 m): what picks the recipe's
  `model.fusion_correlation` (on validation stacks, never on the stacks a benchmark scores);
- a label-free stand-in beside it: the confidence-weighted mean |d - d_t| / d_t against each
  stack's classical teacher (`teachers.teacher_maps`), to show whether ρ could be chosen without
  GT (where the two columns' minima fall apart, it cannot).
Without `--model`: the shipped model.
"""

from __future__ import annotations

import argparse

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


def fusion_scores(model, stacks, rhos: list[float]) -> dict[float, dict[str, float]]:
    """Per ρ: mean AbsRel of the fused depth (all GT, GT <= 1.5 m) and its teacher disagreement, over stacks."""
    depthnet = model.depthnet
    rows: dict[float, list[tuple[float, float, float]]] = {r: [] for r in rhos}
    for stack in stacks:
        log_likelihood = torch.from_numpy(predict_slices(model, stack)["log_likelihood"])
        teacher_depth, teacher_conf, _ = teacher_maps(stack)
        for r in rhos:
            with torch.no_grad():
                fused = depthnet.decode(depthnet.fused_log_likelihood(log_likelihood, r)).numpy()
            rows[r].append((depth_metrics(fused, stack.depth)["abs_rel"],
                            depth_metrics(fused, stack.depth, FOD500_MAX_DEPTH_M)["abs_rel"],
                            teacher_disagreement(fused, teacher_depth, teacher_conf)))
    return {r: dict(zip(("abs_rel", "abs_rel_masked", "teacher"), np.nanmean(np.array(v), axis=0))) for r, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset root or prefix (its stacks need GT depth)")
    parser.add_argument("--model", default="", help="model URI (default: the shipped model)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--stacks", type=int, default=0, help="0 = all")
    parser.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0])
    args = parser.parse_args()
    if not all(0.0 <= r <= 1.0 for r in args.rho):
        parser.error(f"--rho: values must lie in [0, 1], got {args.rho}")
    model = load_model(args.model)[0]
    prefix = focalstack.split_prefix(args.data, args.split)
    stacks = [s for i, s in enumerate(focalstack.read_stacks(prefix))
              if (not args.stacks or i < args.stacks) and s.depth is not None and len(s.focus_distances) > 1]
    if not stacks:
        raise SystemExit(f"--data: no stack of two or more slices with GT depth under {prefix}")
    scores = fusion_scores(model, stacks, args.rho)
    print(f"{len(stacks)} stacks of {prefix}; model {args.model or 'shipped'} (its own rho: {model.cfg.fusion_correlation:g})")
    print(f"{'rho':>6} {'AbsRel':>8} {'<=1.5 m':>8} {'vs teacher':>11}")
    for r, m in scores.items():
        print(f"{r:6.3f} {m['abs_rel']:8.4f} {m['abs_rel_masked']:8.4f} {m['teacher']:11.4f}")
    best = min(scores, key=lambda r: scores[r]["abs_rel"])
    label_free = min(scores, key=lambda r: scores[r]["teacher"])
    print(f"lowest AbsRel at rho = {best:g} ({scores[best]['abs_rel']:.5f}); lowest teacher disagreement at rho = {label_free:g}")


if __name__ == "__main__":
    main()
