"""Benchmark: accuracy of self-supervised against supervised training, beside the classical
baseline, the splat fits and the best constant depth (issue 5).

Smoke run (minutes on 2 CPU cores; shows the pipeline, not accuracy):

    .venv/bin/python jobs/bench_accuracy.py

Long run (what the targets are meant for; 110 min on 2 CPU cores, see docs/benchmarks.md; the
self-supervised net starts to leave the prior only after ~2,000 steps):

    .venv/bin/python jobs/bench_accuracy.py --train-scenes 32 --test-scenes 8 --size 64 --crop 48 \\
        --steps 3000 --batch 4 --workers 1 --fit-steps 60 --eval-every 1000 --out bench_accuracy_out

Training on (the accuracy was still improving at 3,000 steps): the same command with `--extend`
and a larger `--steps` trains both runs in `--out` on from their last checkpoints, scoring the
held-out stacks every `--eval-every` steps, and rewrites the table for the new budget; the data,
fits and earlier held-out points are kept:

    .venv/bin/python jobs/bench_accuracy.py --train-scenes 32 --test-scenes 8 --size 64 --crop 48 \\
        --steps 7000 --batch 4 --workers 1 --fit-steps 60 --eval-every 1000 --out bench_accuracy_out --extend

A lower learning rate for the last steps (both runs; `dfd-ray train` sets the rate from the
config at every step, so it applies to runs resumed from a checkpoint):

    ... --steps 11000 --extend --train-set 'lr_decay_at=[9250]'

Scoring a finished run on a larger held-out set (8 held-out stacks proved too few: the 32-scene
run's self-supervised AbsRel was 0.267 on them and 0.307 on a 40-stack superset, docs/benchmarks.md).
Synthetic scenes are deterministic per (seed, split, index), so `n_test=40` with the run's seed
holds its own test stacks and 32 more; `--heldout` fits their splats (the run's --fit-steps, kept in
`--out/heldout-<name>/` and reused) and scores the run's final models and its best constant:

    .venv/bin/dfd-ray synth out=heldout40 preset=fod500 n_scenes=0 n_test=40 height=64 width=64 seed=0
    .venv/bin/python jobs/bench_accuracy.py --out bench_accuracy_out --heldout heldout40

On a Ray cluster: `ray job submit --runtime-env cluster/runtime_env.yaml -- python
jobs/bench_accuracy.py ...` (same options; `--out` is a local folder of the driver).

Steps, all on the library's own code paths:
1. `fod500`-camera synthetic stacks (`dfd_ray.synth`): `--train-scenes` train, `--test-scenes`
   held-out test, `--size`² pixels;
2. splats fitted to every train AND test scene (`dfd_ray.fit_job`, `--fit-steps`): the train
   fits feed the renderer pool and the teacher, the test fits the fused evaluation;
3. training with `supervision=self` and `supervision=gt` for the same number of steps, batch
   and workers (`dfd_ray.train`); `--train-set key=value` passes more TrainConfig overrides to
   both runs;
4. evaluation on the held-out stacks (`dfd_ray.evaluate`): single slice and fused stack for
   both runs, the classical depth-from-focus baseline and the splat fits. The supervised run is
   evaluated without a splat prior (it never sees one in training: its DepthNet prior inputs
   are untrained), so its fused row is the geometric mean of its single-slice depths;
5. the best constant depth: the c minimising mean |d - c| / d over the valid training GT
   pixels (the weighted median of d with weights 1/d, computed exactly), scored on the test
   stacks with `dfd_ray.metrics.depth_metrics`.

All metrics are per image over valid GT (GT > 0, and GT <= --max-depth where given; DESIGN §6),
then averaged. Output: one markdown table with the budget behind every figure, PASS/FAIL lines
for the three targets, the learning curves (text and `learning_curves.png`), and in `--out`:
`bench_accuracy.md`, `bench_accuracy.json`, `learning_curves.png`, the data, the fits, both
runs (checkpoints, model/, state.json) and their eval folders. Learning curves come from the
training history (every report); `--eval-every N` also scores held-out AbsRel every N steps by
training in N-step segments that resume from the previous segment's checkpoint (each segment
draws new crops: seed + segment index), at the cost of one trainer start-up per segment. The
"train wall" figures are in-loop training seconds summed over segments (from the training
history: trainer start-ups and evaluations are not in them).

Targets (issue 5): fused-stack AbsRel below the classical baseline's; self-supervised
single-slice AbsRel at most 0.7x the best constant's and at most 1.3x the supervised one's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

from dfd_ray import evaluate, fit_job, focalstack, synth, train
from dfd_ray.config import load_config
from dfd_ray.metrics import depth_metrics, mean_metrics, valid_mask
from dfd_ray.ray_session import ensure_ray

PRESET = "fod500"
SELF_TERMS = ("render", "prior", "lens_coc", "lens_depth", "smooth")


# --- the best constant ------------------------------------------------------------------------------

def best_constant(depths: list[np.ndarray], max_depth: float | None) -> tuple[float, int]:
    """argmin_c mean(|d - c| / d) over the valid pixels of `depths`, and the pixel count.

    sum_i |d_i - c| / d_i = sum_i w_i |d_i - c| with w_i = 1 / d_i is piecewise linear and convex
    in c; its minimum is the weighted median: the smallest sorted d_k whose cumulative weight
    reaches half the total.
    """
    d = np.sort(np.concatenate([g[valid_mask(g, max_depth)].astype(np.float64).ravel() for g in depths]))
    if d.size == 0:
        raise SystemExit("no valid training GT pixel for the best constant")
    cum = np.cumsum(1.0 / d)
    return float(d[int(np.searchsorted(cum, 0.5 * cum[-1], side="left"))]), int(d.size)


def constant_record(root: str, test_gt: list[np.ndarray], max_depth: float | None) -> dict:
    """The best constant of the run in `root` (from its training GT) and its metrics on `test_gt`."""
    value, pixels = best_constant(gt_depths(f"{root}/data/train"), max_depth)
    return {"value": value, "train_pixels": pixels,
            "test": mean_metrics(depth_metrics(np.full_like(g, value), g, max_depth) for g in test_gt)}


def mask_label(max_depth: float | None) -> str:
    return "gt > 0" + (f" and gt <= {max_depth} m" if max_depth is not None else "")


def gt_depths(prefix: str) -> list[np.ndarray]:
    return [s.depth for s in focalstack.read_stacks(prefix) if s.depth is not None]


# --- training and evaluation --------------------------------------------------------------------------

def run_eval(model: str, data: str, out: str, splats: str, max_depth: float | None) -> dict:
    overrides = [f"model={model}", f"data={data}", f"out={out}"] + ([f"splats={splats}"] if splats else [])
    if max_depth is not None:
        overrides.append(f"max_depth={max_depth}")
    with contextlib.redirect_stdout(io.StringIO()):  # its own table; ours is printed below
        evaluate.run(load_config(evaluate.EvalConfig, overrides))
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def train_and_eval(args, root: str, supervision: str, report_every: int, prior: dict | None = None) -> dict:
    """Train one supervision mode (in segments when --eval-every), evaluate it; figures + history.

    `prior` is this mode's record from a finished run in `root` (--extend): training goes on from
    the step its checkpoints reached, and its held-out points are kept.
    """
    out = f"{root}/{supervision}"
    splats = f"{root}/fit/splats"
    eval_splats = splats if supervision == "self" else ""  # see the module docstring
    state = read_state(out) if prior else {"step": 0, "history": []}
    start = int(state["step"])
    heldout = list(prior["heldout"]) if prior else []
    if args.eval_every:
        targets = list(range(start + args.eval_every, args.steps, args.eval_every)) + [args.steps]
    else:
        targets = [args.steps]
    if heldout and heldout[-1]["step"] < start < args.steps:  # trained on by hand (`dfd-ray train`): score it
        targets = [start] + targets
    segments_before = len(segments(state["history"]))
    base = [f"data={root}/data", f"out={out}", f"splats={splats}", f"supervision={supervision}",
            f"batch_size={args.batch}", f"crop={args.crop}", f"num_workers={args.workers}",
            f"report_every={report_every}"]
    eval_wall = 0.0
    for k, target in enumerate(targets):
        segment = target - (targets[k - 1] if k else start)
        if segment > 0:
            train.run(load_config(train.TrainConfig, [
                *base, f"steps={target}", f"checkpoint_every={min(segment, 250)}",
                f"seed={args.seed + segments_before + k}",  # each segment draws new crops
                *args.train_set]))
        if args.eval_every or k == len(targets) - 1:
            t0 = time.perf_counter()
            folder = f"{root}/eval_{supervision}" + (f"/step_{target}" if args.eval_every else "")
            report = run_eval(f"{out}/model", f"{root}/data", folder, eval_splats, args.max_depth)
            eval_wall += time.perf_counter() - t0
            heldout.append({"step": target, "single_abs_rel": report["single"]["overall"]["abs_rel"],
                            "fused_abs_rel": report["fused"]["overall"]["abs_rel"]})
            print(f"  {supervision} step {target}: held-out AbsRel single {heldout[-1]['single_abs_rel']:.4f}, "
                  f"fused {heldout[-1]['fused_abs_rel']:.4f}", flush=True)
    history = read_state(out)["history"]
    cfg = load_config(train.TrainConfig, [*base, *args.train_set])
    weights = cfg.loss.__dict__
    for h in history:  # the objective each run minimised, per report
        h["total"] = (h["supervised"] if supervision == "gt"
                      else sum(weights[t] * h[t] for t in SELF_TERMS if t in h))
    train_wall = sum(segments(history).values())
    return {"report": report, "history": history, "heldout": heldout, "train_wall_s": train_wall,
            "eval_wall_s": eval_wall + (prior["eval_wall_s"] if prior else 0.0),
            "s_per_step": seconds_per_step(history, train_wall, args.steps),
            "config": {"steps": args.steps, "batch": args.batch, "workers": args.workers, "crop": args.crop,
                       "lr": cfg.lr, "loss": weights if supervision == "self" else f"{cfg.depth_loss} depth error on GT depth",
                       "depth_loss": cfg.depth_loss, "ema_decay": cfg.ema_decay,
                       "segments": len(segments(history))}}


def read_state(out: str) -> dict:
    """A run's state.json: `step` (its latest checkpoint, what `dfd-ray train` resumes from) and
    `history` (every report)."""
    with open(f"{out}/state.json") as f:
        return json.load(f)


def segments(history: list[dict]) -> dict[int, float]:
    """In-loop training seconds per segment (a trainer start, keyed by the step it resumed from);
    trainer start-up and evaluation are not in them."""
    out: dict[int, float] = {}
    for h in history:
        out[h["resumed_from"]] = max(out.get(h["resumed_from"], 0.0), h["seconds"])
    return out


def seconds_per_step(history: list[dict], wall: float, steps: int) -> float:
    """Steady-state s/step: report-to-report times within a segment, its first report left out
    (it holds the worker start-up); the whole wall over the steps where there are too few reports."""
    pairs = [(b["seconds"] - a["seconds"], b["step"] - a["step"]) for a, b in zip(history, history[1:])
             if a["resumed_from"] == b["resumed_from"] and b["step"] > a["step"]]
    if not pairs:
        return wall / steps
    return sum(s for s, _ in pairs) / sum(n for _, n in pairs)


# --- output ---------------------------------------------------------------------------------------

def _f(x, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def build_rows(args, const: dict, runs: dict, fit: dict) -> list[dict]:
    stacks = f"{args.steps} × {args.batch} × {args.workers}"
    fit_budget = f"{args.fit_steps}/scene"
    self_report, gt_report = runs["self"]["report"], runs["gt"]["report"]
    rows = [
        {"key": "best_constant", "method": f"best constant ({const['value']:.4f} m, from train GT)",
         "metrics": const["test"], "budget": f"closed form, {args.train_scenes} train stacks", "wall": None,
         "fit": "-"},
        {"key": "dff", "method": "classical depth from focus (whole stack)", "metrics": self_report["dff"]["overall"],
         "budget": "none", "wall": None, "fit": "-"},
    ]
    if self_report["splat"]["overall"]:
        rows.append({"key": "splat", "method": "splat fit (whole stack, per test scene)",
                     "metrics": self_report["splat"]["overall"], "budget": "no training",
                     "wall": None, "fit": f"{fit_budget} ({fit['seconds']:.0f} s all scenes)"})
    for mode, label, fit_note in (("self", "self-supervised", fit_budget), ("gt", "supervised (GT depth)", "-")):
        report, wall = runs[mode]["report"], runs[mode]["train_wall_s"]
        rows.append({"key": f"{mode}_single", "method": f"{label}, single slice", "metrics": report["single"]["overall"],
                     "budget": stacks, "wall": wall, "fit": fit_note})
        fused = "fused stack" + (" + splat prior" if report["fused"]["uses_splats"] else ", no prior")
        rows.append({"key": f"{mode}_fused", "method": f"{label}, {fused}", "metrics": report["fused"]["overall"],
                     "budget": stacks, "wall": wall, "fit": fit_note})
    return rows


def table(rows: list[dict], mask: str, images: int) -> str:
    lines = ["| method | AbsRel | RMSE [m] | δ1 | train steps × batch × workers | train wall [s] | splat fit steps |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['method']} | {_f(m.get('abs_rel'))} | {_f(m.get('rmse'))} | {_f(m.get('delta1'), '.3f')} "
                     f"| {r['budget']} | {_f(r['wall'], '.0f') if r['wall'] is not None else '-'} | {r['fit']} |")
    return "\n".join(lines) + f"\n\nHeld-out: {images} stacks. Mask: {mask}. Per image, then averaged (DESIGN §6).\n"


def targets(rows: list[dict]) -> list[dict]:
    by = {r["key"]: r["metrics"]["abs_rel"] for r in rows}
    checks = [
        ("fused-stack AbsRel (self) < classical depth from focus", by["self_fused"], "<", by["dff"], 1.0),
        ("self single-slice AbsRel <= 0.7 × best constant", by["self_single"], "<=", by["best_constant"], 0.7),
        ("self single-slice AbsRel <= 1.3 × supervised single-slice", by["self_single"], "<=", by["gt_single"], 1.3),
    ]
    out = []
    for name, value, op, ref, factor in checks:
        bound = factor * ref
        ok = (value < bound) if op == "<" else (value <= bound)
        ok = bool(ok) and not (math.isnan(value) or math.isnan(bound))
        out.append({"target": name, "value": value, "bound": bound, "pass": ok})
    return out


def row_records(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ("key", "method", "metrics", "budget", "wall", "fit")} for r in rows]


def check_lines(checks: list[dict]) -> list[str]:
    return [f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {_f(c['value'])} vs {_f(c['bound'])}" for c in checks]


def curves_text(runs: dict) -> str:
    self_h = {h["step"]: h for h in runs["self"]["history"]}
    gt_h = {h["step"]: h for h in runs["gt"]["history"]}
    lines = ["step | self total | self render | self prior | self lens_coc | self train-crop AbsRel | gt loss",
             "---: | ---: | ---: | ---: | ---: | ---: | ---:"]
    for step in sorted(set(self_h) | set(gt_h)):
        s, g = self_h.get(step, {}), gt_h.get(step, {})
        lines.append(f"{step} | {_f(s.get('total'))} | {_f(s.get('render'))} | {_f(s.get('prior'))} | "
                     f"{_f(s.get('lens_coc'))} | {_f(s.get('monitor_abs_rel'))} | {_f(g.get('total'))}")
    for mode in ("self", "gt"):
        if len(runs[mode]["heldout"]) > 1:
            lines.append(f"\nheld-out AbsRel, {mode}: " + ", ".join(
                f"step {h['step']}: single {h['single_abs_rel']:.4f} / fused {h['fused_abs_rel']:.4f}"
                for h in runs[mode]["heldout"]))
    return "\n".join(lines)


def plot(runs: dict, const_abs_rel: float, dff_abs_rel: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heldout = any(len(runs[m]["heldout"]) > 1 for m in runs)
    fig, axes = plt.subplots(1, 3 if heldout else 2, figsize=(15 if heldout else 10, 4))
    h = runs["self"]["history"]
    steps = [r["step"] for r in h]
    ax = axes[0]
    for key in ("total", *SELF_TERMS):
        ax.plot(steps, [r.get(key, np.nan) for r in h], label=key, lw=2 if key == "total" else 1)
    ax.set_yscale("log")
    ax.set_title("self-supervised: loss terms (unweighted; total weighted)", fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax = axes[1]
    g = runs["gt"]["history"]
    ax.plot([r["step"] for r in g], [r["total"] for r in g], label="gt: depth loss on GT")
    ax.plot(steps, [r.get("monitor_abs_rel", np.nan) for r in h], label="self: AbsRel on train crops (monitor)")
    ax.axhline(const_abs_rel, ls="--", c="grey", label="best constant, held-out AbsRel")
    ax.set_title("supervised loss and self-supervised train-crop AbsRel", fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    if heldout:
        ax = axes[2]
        for mode in ("self", "gt"):
            c = runs[mode]["heldout"]
            ax.plot([r["step"] for r in c], [r["single_abs_rel"] for r in c], "o-", label=f"{mode}: single slice")
            ax.plot([r["step"] for r in c], [r["fused_abs_rel"] for r in c], "s--", label=f"{mode}: fused")
        ax.axhline(const_abs_rel, ls="--", c="grey", label="best constant")
        ax.axhline(dff_abs_rel, ls=":", c="k", label="depth from focus")
        ax.set_title("held-out AbsRel", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _clean(x):
    """JSON without NaN (null instead)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


# --- main -------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-scenes", type=int, default=8)
    p.add_argument("--test-scenes", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="stack height and width, pixels")
    p.add_argument("--crop", type=int, default=48, help="training crop, pixels")
    p.add_argument("--steps", type=int, default=20, help="training steps, the same for both supervision modes")
    p.add_argument("--batch", type=int, default=2, help="stacks per worker per step")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (fractional CPUs: TrainConfig defaults)")
    p.add_argument("--fit-steps", type=int, default=30, help="splat fit steps per scene (train and test)")
    p.add_argument("--eval-every", type=int, default=0, help="also score held-out AbsRel every N steps (0: at the end)")
    p.add_argument("--report-every", type=int, default=0, help="steps between training reports (0: about 20 reports)")
    p.add_argument("--max-depth", type=float, default=None, help="metres: GT beyond is not scored (default: all GT > 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra TrainConfig override for both runs (repeatable), e.g. renderer.num_actors=2")
    p.add_argument("--out", default="", help="local folder for everything (must be new or empty; default: a new temp dir)")
    p.add_argument("--extend", action="store_true",
                   help="train the finished run in --out on to a larger --steps (same other options), keeping its "
                        "data, fits and held-out points")
    p.add_argument("--heldout", default="", metavar="URI",
                   help="score the finished run in --out on another held-out dataset (its test/ split), without "
                        "training; the data, fit and budget options are the run's own")
    args = p.parse_args(argv)
    if args.train_scenes < args.batch * args.workers:
        p.error(f"--train-scenes {args.train_scenes} < batch × workers = {args.batch * args.workers}")
    if args.extend and not args.out:
        p.error("--extend needs --out: the folder of the run to extend")
    if args.heldout and (args.extend or not args.out):
        p.error("--heldout needs --out (the finished run to score) and no --extend")
    if args.test_scenes < 1 or args.steps < 1 or args.fit_steps < 1:
        p.error("--test-scenes, --steps and --fit-steps must be >= 1")
    if not 0 <= args.eval_every <= args.steps:
        p.error("--eval-every must lie in [0, --steps]")
    if args.crop > args.size:
        p.error("--crop must not exceed --size")
    return args


def fit_splats(data: str, out: str, fit_steps: int, max_depth: float | None) -> dict:
    """Splat fits of every scene under `data` into `out` (fit_job); exits when one fails."""
    overrides = [f"data={data}", f"out={out}", f"fit.steps={fit_steps}",
                 f"fit.warmup_steps={min(30, fit_steps // 3)}", "ray_cpus=4"]
    if max_depth is not None:
        overrides.append(f"eval_max_depth={max_depth}")
    brief = fit_job.run(load_config(fit_job.FitJobConfig, overrides))
    if brief["failed"]:
        sys.exit(f"{brief['failed']} scene fit(s) failed: see {out}/fit_metrics.json")
    return brief


def make_data_and_fits(args, root: str, timings: dict) -> None:
    t0 = time.perf_counter()
    synth.run(load_config(synth.SynthConfig, [
        f"out={root}/data", f"preset={PRESET}", f"n_scenes={args.train_scenes}", f"n_test={args.test_scenes}",
        f"height={args.size}", f"width={args.size}", f"seed={args.seed}"]))
    timings["synth_s"] = time.perf_counter() - t0
    print(f"[1/5] data: {timings['synth_s']:.1f} s", flush=True)

    t0 = time.perf_counter()
    fit_brief = fit_splats(f"{root}/data", f"{root}/fit", args.fit_steps, args.max_depth)
    timings["fit_s"] = time.perf_counter() - t0
    print(f"[2/5] splat fits, {fit_brief['scenes']} scenes: {timings['fit_s']:.1f} s", flush=True)


# options that define the data, the fits and the training budget per step: --extend must repeat them
EXTEND_SAME = ("train_scenes", "test_scenes", "size", "crop", "batch", "workers", "fit_steps", "max_depth", "seed")


def finished_run(root: str, flag: str) -> dict:
    """The record (bench_accuracy.json) of the finished run in `root`; exits when there is none."""
    path = f"{root}/bench_accuracy.json"
    if not os.path.isfile(path):
        sys.exit(f"{flag}: {path} not found: --out must hold a finished bench_accuracy run")
    with open(path) as f:
        return json.load(f)


def previous_run(root: str, args) -> dict:
    """The finished run in `root` that --extend trains on, checked against this command's options."""
    prev = finished_run(root, "--extend")
    diff = [f"--{k.replace('_', '-')} {prev['args'][k]} (given {getattr(args, k)})"
            for k in EXTEND_SAME if prev["args"][k] != getattr(args, k)]
    if diff:
        sys.exit("--extend must repeat the previous run's options; it ran with " + ", ".join(diff))
    steps = {mode: int(read_state(f"{root}/{mode}")["step"]) for mode in ("self", "gt")}
    beyond = [f"the {mode} run is at step {step}" for mode, step in steps.items() if step > args.steps]
    if beyond or max(steps.values()) == prev["args"]["steps"] == args.steps:
        sys.exit(f"--extend: {'; '.join(beyond) or 'both runs are at --steps already'} in {root}; "
                 f"--steps {args.steps} must be larger")
    return prev


def heldout_folder(root: str, uri: str) -> str:
    """Where --heldout URI puts its fits and evaluations: one folder per held-out dataset."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in uri.rstrip("/").rsplit("/", 1)[-1])
    return f"{root}/heldout-{name or 'data'}"


def check_heldout(root: str, uri: str) -> tuple[str, list[str]]:
    """The held-out prefix of `uri` and its scene ids; exits when it is empty or shares a scene with
    the run's training data (scoring on training stacks would flatter every learned row)."""
    try:
        prefix = evaluate.eval_prefix(uri)
        ids = sorted(focalstack.scene_index(prefix))
    except (FileNotFoundError, focalstack.DatasetError) as exc:
        sys.exit(f"--heldout {uri}: {exc}")
    if not ids:
        sys.exit(f"--heldout {uri}: no stacks under {prefix}")
    shared = sorted(set(ids) & set(focalstack.scene_index(f"{root}/data/train")))
    if shared:
        sys.exit(f"--heldout {uri}: {len(shared)} of its {len(ids)} stacks are training stacks of the run in {root} "
                 f"(e.g. {shared[0]}); held-out stacks must be new to the models")
    return prefix, ids


def score_heldout(args) -> None:
    """--heldout: the run's final models, its best constant (from its own training GT), the classical
    baseline and splat fits of the held-out stacks, scored on them; the same table and targets."""
    root = os.path.abspath(args.out)
    prev = finished_run(root, "--heldout")
    run_args = argparse.Namespace(**prev["args"])
    prefix, ids = check_heldout(root, args.heldout)
    folder = heldout_folder(root, args.heldout)
    test_gt = gt_depths(prefix)
    if len(test_gt) < len(ids):
        sys.exit(f"--heldout {args.heldout}: {len(ids) - len(test_gt)} of its {len(ids)} stacks have no GT depth")
    print(f"bench_accuracy --heldout: the run in {root} on {len(ids)} stacks of {prefix}; out {folder}", flush=True)
    started_ray = ensure_ray(4)
    try:
        fit_path = f"{folder}/fit/fit_metrics.json"
        fitted = set()
        if os.path.isfile(fit_path):
            with open(fit_path) as f:
                fitted = {r["scene_id"] for r in json.load(f)["per_scene"]}
        if not set(ids) <= fitted:  # fits of an earlier --heldout call on the same data are reused
            fit_splats(prefix, f"{folder}/fit", run_args.fit_steps, run_args.max_depth)
        with open(fit_path) as f:
            fit = json.load(f)
        print(f"[1/3] splat fits of the held-out stacks: {fit['seconds']:.0f} s", flush=True)

        const = constant_record(root, test_gt, run_args.max_depth)
        print(f"[2/3] best constant of the run: {const['value']:.4f} m, held-out AbsRel "
              f"{const['test']['abs_rel']:.4f}", flush=True)
        runs = {}
        for mode in ("self", "gt"):
            splats = f"{folder}/fit/splats" if mode == "self" else ""  # as in the run (module docstring)
            report = run_eval(f"{root}/{mode}/model", prefix, f"{folder}/eval_{mode}", splats, run_args.max_depth)
            runs[mode] = {"report": report, "train_wall_s": prev["runs"][mode]["train_wall_s"]}
        print(f"[3/3] evaluated both models (self at step {runs['self']['report']['trained_steps']}, gt at step "
              f"{runs['gt']['report']['trained_steps']})", flush=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    mask = mask_label(run_args.max_depth)
    rows = build_rows(run_args, const, runs, fit)
    checks = targets(rows)
    text = (f"## Accuracy of the run in {root} on held-out {prefix}\n\n{table(rows, mask, len(test_gt))}\n"
            + "\n".join(check_lines(checks)) + "\n")
    with open(f"{folder}/bench_accuracy.md", "w") as f:
        f.write(text)
    with open(f"{folder}/bench_accuracy.json", "w") as f:
        json.dump(_clean({"run": root, "heldout": prefix, "test_stacks": len(test_gt), "mask": mask,
                          "best_constant": const, "steps": {m: runs[m]["report"]["trained_steps"] for m in runs},
                          "rows": row_records(rows),
                          "targets": checks}), f, indent=2)
    print("\n" + text)
    print(f"wrote {folder}/bench_accuracy.md, bench_accuracy.json", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.heldout:
        return score_heldout(args)
    root = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="dfd-bench-accuracy-")
    prev = previous_run(root, args) if args.extend else None
    if prev is None and os.path.isdir(root) and os.listdir(root):
        sys.exit(f"--out {root} is not empty: a second run there would resume the first one's training "
                 "(--extend trains a finished run on to a larger --steps)")
    os.makedirs(root, exist_ok=True)
    report_every = args.report_every or max(1, args.steps // 20)
    if args.eval_every and args.eval_every % report_every:
        report_every = math.gcd(report_every, args.eval_every)
    mask = mask_label(args.max_depth)
    print(f"bench_accuracy: {PRESET} camera, {args.train_scenes} train / {args.test_scenes} test stacks of "
          f"{args.size}², crop {args.crop}, {args.steps} steps × batch {args.batch} × {args.workers} worker(s) per "
          f"mode, {args.fit_steps} fit steps; out {root}", flush=True)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    started_ray = ensure_ray(4)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        if prev is None:
            make_data_and_fits(args, root, timings)
        else:
            timings.update({k: prev["timings_s"][k] for k in ("synth_s", "fit_s")})
            print(f"[1-2/5] --extend: the data and splat fits of the run in {root} (trained to step "
                  f"{prev['args']['steps']})", flush=True)

        test_gt = gt_depths(f"{root}/data/test")
        const = constant_record(root, test_gt, args.max_depth)
        print(f"[3/5] best constant: {const['value']:.4f} m over {const['train_pixels']} train pixels, held-out "
              f"AbsRel {const['test']['abs_rel']:.4f}", flush=True)

        runs = {}
        for i, mode in enumerate(("self", "gt")):
            runs[mode] = train_and_eval(args, root, mode, report_every, prev["runs"][mode] if prev else None)
            print(f"[{4 + i}/5] {mode}: trained {args.steps} steps in {runs[mode]['train_wall_s']:.1f} s "
                  f"({runs[mode]['s_per_step']:.2f} s/step steady), evaluated in {runs[mode]['eval_wall_s']:.1f} s",
                  flush=True)
            timings[f"train_{mode}_s"] = runs[mode]["train_wall_s"]
            timings[f"eval_{mode}_s"] = runs[mode]["eval_wall_s"]
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    timings["total_s"] = time.perf_counter() - start + (prev["timings_s"]["total_s"] if prev else 0.0)

    with open(f"{root}/fit/fit_metrics.json") as f:
        fit = json.load(f)
    rows = build_rows(args, const, runs, fit)
    md = table(rows, mask, len(test_gt))
    checks = targets(rows)
    curves = curves_text(runs)
    plot(runs, const["test"]["abs_rel"], runs["self"]["report"]["dff"]["overall"]["abs_rel"],
         f"{root}/learning_curves.png")
    extended_from = prev.get("extended_from_steps", []) + [prev["args"]["steps"]] if prev else []
    budget = (f"Budget: both modes {args.steps} steps × batch {args.batch} × {args.workers} worker(s) = "
              f"{args.steps * args.batch * args.workers} stacks of {args.crop}² crops each; splat fits {args.fit_steps} "
              f"steps per scene, {fit['scenes']} scenes in {timings['fit_s']:.0f} s; steady s/step: self "
              f"{runs['self']['s_per_step']:.2f}, gt {runs['gt']['s_per_step']:.2f}; total wall "
              f"{timings['total_s']:.0f} s" + (f" (trained on with --extend from step(s) "
                                                f"{', '.join(map(str, extended_from))})." if prev else "."))
    text = (f"## Accuracy ({PRESET} synthetic, {args.size}²)\n\n{md}\n{budget}\n\n" + "\n".join(check_lines(checks))
            + f"\n\n## Learning curves (training reports)\n\n{curves}\n")
    with open(f"{root}/bench_accuracy.md", "w") as f:
        f.write(text)
    with open(f"{root}/bench_accuracy.json", "w") as f:
        json.dump(_clean({
            "args": vars(args), "extended_from_steps": extended_from, "out": root, "mask": mask, "test_stacks": len(test_gt),
            "best_constant": const, "rows": row_records(rows),
            "targets": checks, "timings_s": timings, "fit": {k: fit[k] for k in ("scenes", "seconds", "fit")},
            "runs": {m: {k: runs[m][k] for k in ("history", "heldout", "train_wall_s", "eval_wall_s", "s_per_step",
                                                  "config")} for m in runs},
        }), f, indent=2)
    print("\n" + text)
    print(f"wrote {root}/bench_accuracy.md, bench_accuracy.json, learning_curves.png", flush=True)


if __name__ == "__main__":
    main()
