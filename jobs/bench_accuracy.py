"""Benchmark: single-photo depth of self-supervised and GT-supervised training against the best
constant and classical depth from focus, on held-out stacks no training saw.

Smoke run (minutes on 2 CPU cores; shows the pipeline, not accuracy):

    .venv/bin/python jobs/bench_accuracy.py

The recipe's run (docs/benchmarks.md): 1,200 generated fod500 stacks of 64², 40 held-out, the
TrainConfig defaults for both supervision modes:

    .venv/bin/python jobs/bench_accuracy.py --train-scenes 1200 --test-scenes 40 --size 64 \\
        --out bench_out --modes self gt

Other held-out sets (e.g. 256² stacks, or another camera) are scored with `--test URI` (a dataset
root or prefix, repeatable); finished models with `--model NAME=URI` (repeatable; `--steps 0`
trains nothing). `--train-set key=value` passes TrainConfig overrides to every run.

Steps, all on the library's own code paths: generate the data where `--data` does not exist
(`dfd_ray.synth`, deterministic per seed, so `--test-scenes 40` with seed 0 is always the same 40
stacks); train each mode (`dfd_ray.train`: a finished run under `--out` resumes and stops at once);
evaluate each model on each held-out set with and without the FoD500 mask (`dfd_ray.evaluate`:
single slice, fused through the lens, defocus-map error, side of the focus plane, depth from
focus); the best constant of the training GT (`metrics.best_constant`) on the same stacks. Output:
markdown tables with the budget behind every figure and PASS/FAIL lines for the targets, in
`--out/bench_accuracy.md` and `.json`.

Targets (issue 15): self-supervised single-slice AbsRel <= 0.45x the best constant and CoC MAE <=
0.35 px; self within 1.2x of GT-supervised; fused through the lens below depth from focus.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np

from dfd_ray import evaluate, focalstack, storage, synth, train
from dfd_ray.config import load_config
from dfd_ray.metrics import FOD500_MAX_DEPTH_M, best_constant, depth_metrics, mean_metrics

MASKS = (None, FOD500_MAX_DEPTH_M)  # metres: all GT, and the FoD500 practice of scoring GT <= 1.5 m


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="", help="dataset root; generated there when missing (default: OUT/data)")
    p.add_argument("--train-scenes", type=int, default=16)
    p.add_argument("--test-scenes", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="generated stacks' height and width, pixels")
    p.add_argument("--preset", default="fod500")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=30, help="training steps per mode (0: train nothing)")
    p.add_argument("--modes", nargs="+", default=["self"], choices=["self", "gt"])
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--test", action="append", default=[], metavar="URI", help="more held-out sets to score")
    p.add_argument("--model", action="append", default=[], metavar="NAME=URI", help="more models to score")
    p.add_argument("--out", default="", help="local folder: runs, evaluations, tables (default: a new temp dir)")
    return p.parse_args(argv)


def ensure_data(args) -> str:
    root = args.data or os.path.join(args.out, "data")
    if not storage.exists(root):
        synth.run(load_config(synth.SynthConfig, [
            f"out={root}", f"preset={args.preset}", f"n_scenes={args.train_scenes}", f"n_test={args.test_scenes}",
            f"height={args.size}", f"width={args.size}", f"seed={args.seed}"]))
    return root


def train_mode(args, root: str, mode: str) -> dict:
    out = os.path.join(args.out, mode)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        train.run(load_config(train.TrainConfig, [f"data={root}", f"out={out}", f"supervision={mode}",
                                                  f"steps={args.steps}", *args.train_set]))
    wall = time.perf_counter() - t0
    history = json.loads(storage.read_bytes(os.path.join(out, "state.json")))["history"]
    # In-loop seconds: each trainer start (a resume) restarts the clock of its reports.
    segments: dict[int, float] = {}
    for h in history:
        segments[h["resumed_from"]] = h["seconds"]
    return {"model": os.path.join(out, "model"), "steps": history[-1]["step"], "train_s": round(sum(segments.values()), 1),
            "wall_s": round(wall, 1), "train_set": args.train_set}


def score(model: str, data: str, out: str, max_depth: float | None) -> dict:
    overrides = [f"model={model}", f"data={data}", f"out={out}"] + ([f"max_depth={max_depth}"] if max_depth else [])
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate.run(load_config(evaluate.EvalConfig, overrides))
    return json.loads(storage.read_bytes(os.path.join(out, "metrics.json")))


def constant_row(train_prefix: str, test_prefix: str, max_depth: float | None) -> dict:
    value, pixels = best_constant((s.depth for s in focalstack.read_stacks(train_prefix) if s.depth is not None), max_depth)
    tests = [s.depth for s in focalstack.read_stacks(test_prefix) if s.depth is not None]
    return {"value": value, "train_pixels": pixels, "source": "training GT" if train_prefix != test_prefix else "held-out GT",
            "metrics": mean_metrics(depth_metrics(np.full_like(g, value), g, max_depth) for g in tests)}


def _f(x: float) -> str:
    return "—" if x is None or x != x else f"{x:.4f}"


def tables(results: dict) -> tuple[str, list[str]]:
    lines, checks = [], []
    for test, by_mask in results["scores"].items():
        for mask, entry in by_mask.items():
            const = entry["constant"]
            lines += [f"\n### {test}, mask {mask}\n",
                      "| method | AbsRel | × constant | RMSE | δ1 | CoC MAE [px] | wrong side |", "|---|---|---|---|---|---|---|",
                      f"| best constant ({const['value']:.3f} m, {const['source']}) | {_f(const['metrics']['abs_rel'])} | 1.00 "
                      f"| {_f(const['metrics']['rmse'])} | {_f(const['metrics']['delta1'])} | | |"]
            dff = None
            for name, report in entry["models"].items():
                single, fused = report["single"]["overall"], report["fused"]["overall"]
                dff = report["dff"]["overall"]
                ratio = single["abs_rel"] / const["metrics"]["abs_rel"]
                lines.append(f"| {name}, single slice | {_f(single['abs_rel'])} | {ratio:.2f} | {_f(single['rmse'])} "
                             f"| {_f(single['delta1'])} | {report['single']['coc_px']['overall']['coc_mae_px']:.3f} "
                             f"| {report['single']['side']['overall']['wrong_side']:.3f} |")
                lines.append(f"| {name}, fused through the lens | {_f(fused['abs_rel'])} "
                             f"| {fused['abs_rel'] / const['metrics']['abs_rel']:.2f} | {_f(fused['rmse'])} "
                             f"| {_f(fused['delta1'])} | | |")
            if dff:
                lines.append(f"| depth from focus (whole stack) | {_f(dff['abs_rel'])} "
                             f"| {dff['abs_rel'] / const['metrics']['abs_rel']:.2f} | {_f(dff['rmse'])} | {_f(dff['delta1'])} | | |")
            for name, report in entry["models"].items():
                per = report["single"]["per_focus_distance"]
                coc = report["single"]["coc_px"]["per_focus_distance"]
                side = report["single"]["side"]["per_focus_distance"]
                lines += [f"\n{name}, single slice per focus distance:\n",
                          "| s [m] | AbsRel | CoC MAE [px] | mean GT CoC [px] | AbsRel on the GT side | wrong side |",
                          "|---|---|---|---|---|---|"]
                for s in per:
                    lines.append(f"| {s} | {_f(per[s]['abs_rel'])} | {coc[s]['coc_mae_px']:.3f} | {coc[s]['gt_coc_mean_px']:.3f} "
                                 f"| {_f(side[s]['abs_rel_true_side'])} | {side[s]['wrong_side']:.3f} |")
            models = entry["models"]
            if "self" in models:
                single = models["self"]["single"]["overall"]["abs_rel"]
                ok = single <= 0.45 * const["metrics"]["abs_rel"]
                checks.append(f"{test} {mask}: self single {single:.4f} <= 0.45 x constant "
                              f"{0.45 * const['metrics']['abs_rel']:.4f}: {'PASS' if ok else 'FAIL'}")
                mae = models["self"]["single"]["coc_px"]["overall"]["coc_mae_px"]
                checks.append(f"{test} {mask}: self CoC MAE {mae:.3f} px <= 0.35: {'PASS' if mae <= 0.35 else 'FAIL'}")
                fused = models["self"]["fused"]["overall"]["abs_rel"]
                checks.append(f"{test} {mask}: self fused {fused:.4f} < depth from focus {dff['abs_rel']:.4f}: "
                              f"{'PASS' if fused < dff['abs_rel'] else 'FAIL'}")
                if "gt" in models:
                    gt = models["gt"]["single"]["overall"]["abs_rel"]
                    checks.append(f"{test} {mask}: self single {single:.4f} <= 1.2 x GT-supervised {1.2 * gt:.4f}: "
                                  f"{'PASS' if single <= 1.2 * gt else 'FAIL'}")
    return "\n".join(lines), checks


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out = args.out or tempfile.mkdtemp(prefix="bench_accuracy_")
    os.makedirs(args.out, exist_ok=True)
    root = ensure_data(args)
    runs = {}
    if args.steps > 0:
        for mode in args.modes:
            runs[mode] = train_mode(args, root, mode)
            print(f"trained {mode}: {runs[mode]}", flush=True)
    models = {name: run["model"] for name, run in runs.items()}
    models |= dict(item.split("=", 1) for item in args.model)
    train_prefix = focalstack.split_prefix(root, "train")
    scores: dict = {}
    for test in [root, *args.test]:
        test_prefix = focalstack.split_prefix(test, "test")
        # The constant comes from the training GT of the test set's own dataset (its camera and
        # depths), or from the held-out GT itself where it has no training split (an oracle constant).
        const_prefix = focalstack.split_prefix(test, "train") if test_prefix != focalstack.split_prefix(test, "train") else test_prefix
        for mask in MASKS:
            label = "all GT" if mask is None else f"GT <= {mask} m"
            entry = {"constant": constant_row(const_prefix, test_prefix, mask), "models": {}}
            for name, model in models.items():
                folder = os.path.join(args.out, "eval", name, os.path.basename(test.rstrip("/")), str(mask or "all"))
                entry["models"][name] = score(model, test, folder, mask)
            scores.setdefault(test_prefix, {})[label] = entry
    results = {"args": vars(args), "runs": runs, "models": models, "scores": scores}
    text, checks = tables(results)
    budget = "\n".join(f"- {m}: {r['steps']} steps, {r['train_s']} s in the training loop ({r['wall_s']} s with "
                       f"start-up and teachers), overrides {r['train_set']}" for m, r in runs.items())
    report = f"## bench_accuracy\n\nTraining data: {train_prefix}\n\n{budget}\n{text}\n\n" + "\n".join(checks) + "\n"
    with open(os.path.join(args.out, "bench_accuracy.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.out, "bench_accuracy.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(report)


if __name__ == "__main__":
    main()
