"""The accuracy benchmark's own arithmetic and its --extend checks (the benchmark itself is a
job, run by hand: docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_accuracy", Path(__file__).resolve().parents[1] / "jobs" / "bench_accuracy.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_best_constant_minimises_mean_abs_rel():
    rng = np.random.default_rng(0)
    depths = [rng.uniform(0.1, 3.0, (7, 9)).astype(np.float32), np.array([[0.0, 0.5], [2.0, 9.0]], np.float32)]
    c, n = bench.best_constant(depths, max_depth=3.0)
    valid = np.concatenate([depths[0].ravel(), [0.5, 2.0]]).astype(np.float64)  # 0 and 9 m are masked out
    assert n == valid.size
    grid = np.linspace(0.1, 3.0, 20001)
    brute = grid[np.argmin([np.mean(np.abs(valid - g) / valid) for g in grid])]
    assert np.mean(np.abs(valid - c) / valid) <= np.mean(np.abs(valid - brute) / valid) + 1e-12
    assert c in valid  # the weighted median is a sample


def test_segments_sum_in_loop_seconds_per_trainer_start():
    history = [{"step": 50, "seconds": 40.0, "resumed_from": 0}, {"step": 100, "seconds": 90.0, "resumed_from": 0},
               {"step": 150, "seconds": 55.0, "resumed_from": 100}, {"step": 200, "seconds": 101.0, "resumed_from": 100}]
    assert bench.segments(history) == {0: 90.0, 100: 101.0}
    # steady s/step leaves the first report of each segment out (it holds the start-up)
    assert bench.seconds_per_step(history, 191.0, 200) == pytest.approx((50.0 + 46.0) / 100)


def _finished_run(root: Path, args, steps: dict[str, int]) -> None:
    (root / "bench_accuracy.json").write_text(json.dumps({"args": vars(args)}))
    for mode, step in steps.items():
        (root / mode).mkdir()
        (root / mode / "state.json").write_text(json.dumps({"step": step, "history": []}))


def test_extend_refuses_what_it_cannot_train_on(tmp_path, capsys):
    base = ["--train-scenes", "8", "--steps", "100", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        bench.parse_args(["--extend"])
    assert "--extend needs --out" in capsys.readouterr().err
    args = bench.parse_args(base + ["--extend"])
    with pytest.raises(SystemExit, match="bench_accuracy.json not found"):
        bench.previous_run(str(tmp_path), args)

    _finished_run(tmp_path, bench.parse_args(base), {"self": 100, "gt": 100})
    with pytest.raises(SystemExit, match=r"both runs are at --steps already .*; --steps 100 must be larger"):
        bench.previous_run(str(tmp_path), args)
    (tmp_path / "gt" / "state.json").write_text(json.dumps({"step": 300, "history": []}))  # trained on by hand
    with pytest.raises(SystemExit, match=r"the gt run is at step 300 in .*; --steps 200 must be larger"):
        bench.previous_run(str(tmp_path), bench.parse_args(base + ["--extend", "--steps", "200"]))
    (tmp_path / "gt" / "state.json").write_text(json.dumps({"step": 200, "history": []}))
    with pytest.raises(SystemExit, match=r"--crop 48 \(given 32\), --batch 2 \(given 4\)"):
        bench.previous_run(str(tmp_path), bench.parse_args(base + ["--extend", "--steps", "200", "--crop", "32",
                                                                     "--batch", "4"]))
    prev = bench.previous_run(str(tmp_path), bench.parse_args(base + ["--extend", "--steps", "200"]))
    assert prev["args"]["steps"] == 100


def test_heldout_needs_a_finished_run_and_data_new_to_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--heldout", "data"])
    assert "--heldout needs --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--heldout", "data", "--out", str(tmp_path), "--extend"])
    assert "no --extend" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--heldout: .*bench_accuracy.json not found"):
        bench.score_heldout(bench.parse_args(["--heldout", "data", "--out", str(tmp_path)]))

    run = tmp_path / "run"
    bench.synth.run(bench.load_config(bench.synth.SynthConfig, [
        f"out={run}/data", "n_scenes=2", "n_test=1", "height=16", "width=16"]))
    bench.synth.run(bench.load_config(bench.synth.SynthConfig, [
        f"out={tmp_path}/more", "n_scenes=0", "n_test=3", "height=16", "width=16"]))
    prefix, ids = bench.check_heldout(str(run), str(tmp_path / "more"))
    assert prefix.rstrip("/").endswith("more/test") and len(ids) == 3
    assert ids[0] == "synth-test-0-000000"  # the run's own test stack: new to the models, so allowed
    with pytest.raises(SystemExit, match=r"--heldout .*/run/data/train: 2 of its 2 stacks are training stacks"):
        bench.check_heldout(str(run), str(run / "data" / "train"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"--heldout .*/empty: "):
        bench.check_heldout(str(run), str(tmp_path / "empty"))
    assert bench.heldout_folder("/r", "s3://bucket/held out/") == "/r/heldout-held-out"
