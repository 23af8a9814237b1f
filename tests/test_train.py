"""Training on a real local Ray: DDP steps, checkpoint/resume, a killed worker, and evaluation."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from dfd_ray import evaluate, focalstack, storage, teachers, train
from dfd_ray.config import ConfigError, load_config
from dfd_ray.models import DFDModel, ModelConfig, load_model, save_model
from tests.datasets import tiny_dataset

TERMS = ("teacher_coc", "teacher_scale", "side", "lens_coc", "lens_depth", "render", "prior", "smooth")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="module")
def splats(tmp_path_factory):
    return str(tmp_path_factory.mktemp("splats"))  # filled by the renderer pool's fits on first use


def train_cfg(data, splats, out, *extra):
    return load_config(train.TrainConfig, [
        f"data={data}", f"out={out}", f"splats={splats}", "crop=32", "batch_size=1", "lr=3e-3", "lr_decay_at=[]",
        # 6 crops per stack per pass: a pass restarts Ray Data, which costs seconds (here once a step at 1)
        "crops_per_pass=6",
        "num_workers=2", "worker_cpus=0.5", "report_every=2", "checkpoint_every=2", "renderer.num_cpus=0.25", "renderer.fit.steps=20", "renderer.fit.warmup_steps=5",
        *extra,
    ])


def test_too_few_stacks_for_the_workers_fails_before_cluster_work(data, splats, tmp_path):
    from dfd_ray.config import ConfigError

    with pytest.raises(ConfigError, match="holds 2 training stack.*need at least 6"):
        train.run(train_cfg(data, splats, tmp_path / "run", "num_workers=3", "batch_size=2"))
    assert not (tmp_path / "run").exists()


def _history(out):
    return json.loads(storage.read_bytes(storage.join(str(out), "state.json")))["history"]


def test_ddp_steps_with_streamed_teachers_lower_every_loss_term_then_eval(ray_session, data, splats, tmp_path):
    out = tmp_path / "run"
    # Every term on, the renderer pool's two as well; a fresh dataset gets its teacher sidecars first.
    # Smoothness is left out of the check: an untrained net predicts nearly constant maps, and the
    # structure it learns in 24 steps raises it (each term alone falls: the test above).
    shards = focalstack.shard_uris(f"{data}/train")
    assert not any(teachers.sidecar_is_current(s) for s in shards)
    result = train.run(train_cfg(data, splats, out, "steps=24", "report_every=6", "checkpoint_every=24",
                                 "loss.render=10", "loss.prior=5"))
    assert all(teachers.sidecar_is_current(s) for s in shards)
    history = _history(out)
    assert [h["step"] for h in history] == [6, 12, 18, 24]
    for term in (t for t in TERMS if t != "smooth"):
        assert history[-1][term] < history[0][term], (term, [h[term] for h in history])
    assert (out / "training_curve.png").stat().st_size > 1000 and (out / "sample_prediction.png").exists()
    assert result["renderer"][0]["requests"] > 0
    gains = focalstack.lens_gains_px(f"{data}/train")  # the nets know the training data's gains
    assert load_model(f"{out}/model")[0].gain_range.tolist() == pytest.approx([gains.min(), gains.max()])

    metrics_dir = tmp_path / "eval"
    evaluate.run(load_config(evaluate.EvalConfig, [f"model={out}/model", f"data={data}", f"out={metrics_dir}",
                                                  f"splats={splats}", "fit_at_test=true", "fit.steps=10"]))
    report = json.loads((metrics_dir / "metrics.json").read_text())
    keys = {"abs_rel", "sq_rel", "rmse", "rmse_log", "mae", "mse", "delta1", "delta2", "delta3"}
    assert keys <= set(report["single"]["overall"]) and keys <= set(report["fused"]["overall"])
    assert keys <= set(report["fused_splat"]["overall"])
    assert set(report["single"]["per_focus_distance"]) == {"0.1", "0.15", "0.3", "0.7", "1.5"}
    for per_s in report["single"]["per_focus_distance"].values():
        assert keys <= set(per_s)
    assert keys <= set(report["dff"]["overall"]) and keys <= set(report["splat"]["overall"])
    coc = report["single"]["coc_px"]
    assert set(coc["per_focus_distance"]) == set(report["single"]["per_focus_distance"])
    for m in [coc["overall"], *coc["per_focus_distance"].values()]:
        assert m["coc_mae_px"] >= 0 and m["gt_coc_mean_px"] > 0 and m["images"] > 0
    side = report["single"]["side"]
    assert set(side["per_focus_distance"]) == set(report["single"]["per_focus_distance"])
    assert 0 <= side["overall"]["wrong_side"] <= 1 and side["overall"]["abs_rel_true_side"] >= 0
    table = (metrics_dir / "metrics.md").read_text()
    assert "| fused through the lens (whole stack) |" in table and "| fused through the lens + splat fit |" in table


@pytest.mark.slow  # the gt step is tested without Ray (test_train_step), a bad init in the test below
def test_gt_supervision_needs_no_teachers_or_renderer_and_init_starts_from_a_model(ray_session, tmp_path, monkeypatch):
    data = tmp_path / "data"
    tiny_dataset(data, "n_test=0", "seed=4")
    torch.manual_seed(5)
    start = DFDModel(ModelConfig())
    start.set_gain_range(torch.tensor([0.1, 0.2]))  # px·m: another camera's
    save_model(start, str(tmp_path / "start"))
    # Fine-tuning starts from a model's weights: at a vanishing rate they stay the model's. The
    # model is named relative to the driver's folder, which the workers do not share.
    monkeypatch.chdir(tmp_path)
    result = train.run(train_cfg(str(data), str(tmp_path / "splats"), tmp_path / "run", "steps=4", "supervision=gt",
                                 "init=start", "lr=1e-12"))
    history = _history(tmp_path / "run")
    assert [h["step"] for h in history] == [2, 4] and result["renderer"] == []
    assert not list(data.glob("train/teachers/*")) and not (tmp_path / "splats").exists()
    start, tuned = load_model(str(tmp_path / "start"))[0], load_model(str(tmp_path / "run" / "model"))[0]
    weights = [(a, b) for (k, a), b in zip(start.state_dict().items(), tuned.state_dict().values()) if "weight" in k]
    assert weights and all(torch.allclose(a, b, atol=1e-6) for a, b in weights)
    gains = focalstack.lens_gains_px(f"{data}/train")  # fine-tuning widens the gains the nets know
    assert tuned.gain_range.tolist() == pytest.approx([0.1, gains.max()])


def test_a_bad_init_model_is_a_config_error_before_cluster_work(data, splats, tmp_path):
    with pytest.raises(ConfigError, match="'init'.*is not a dfd-ray model"):
        train.run(train_cfg(data, splats, tmp_path / "run", f"init={tmp_path / 'nothing'}"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [("lr_decay=0", "lr_decay"), ("lr_decay=1.5", "lr_decay"),
                                           ("lr_decay_at=[0]", "lr_decay_at"), ("lr=0", "lr"),
                                           ("ema_decay=1", "ema_decay"), ("ema_decay=-0.1", "ema_decay"),
                                           ("depth_loss=abs", "depth_loss"), ("loss.side=-1", "loss"),
                                           ("lr_schedule=linear", "lr_schedule")])
def test_bad_learning_rate_schedule_is_a_config_error(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(train.TrainConfig, ["data=d", "out=o", override])


def test_an_embedded_ray_too_small_for_its_data_pipeline_is_a_config_error(data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the command line starts its own Ray
    proc = subprocess.run([sys.executable, "-m", "dfd_ray.cli", "train", "--data", data, "--out", str(tmp_path / "out"),
                           "ray_cpus=1", "num_workers=1", "worker_cpus=0.9", "batch_size=1"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2 and "'ray_cpus'" in proc.stderr and "less than the 0.25 CPU" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_loss_with_no_term_switched_on_is_a_config_error():
    with pytest.raises(ConfigError, match="'loss'.*one at least > 0"):
        train.TrainConfig(data="d", out="o", loss=train.LossWeights(**{k: 0.0 for k in train.LossWeights.__dataclass_fields__}))


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_killed_worker_resumes_from_checkpoint_and_finishes(ray_session, data, splats, tmp_path, where, request):
    """A killed worker: the group restarts from the latest checkpoint and finishes. On S3 (slow),
    where the data, the teachers, the checkpoints and the model all live in the bucket, the same
    command with more steps then resumes the finished run at its last step, on its new schedule
    (also tested locally by test_interrupts' SIGTERM run, slow)."""
    import os
    import signal

    import ray
    from ray.util.state import list_actors

    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        tiny_dataset(f"{bucket}/data")
        data, out = f"{bucket}/data", f"{bucket}/run"
    else:
        out = str(tmp_path / "run")
    fs, checkpoints = storage.filesystem(storage.join(out, "dfd"))
    killed = []
    address = ray.get_runtime_context().gcs_address  # this session's Ray, even when others run

    def train_workers():
        alive = list_actors(address=address, filters=[("state", "=", "ALIVE")])
        return [a for a in alive if "RayTrainWorker" in a.class_name]

    earlier = {a.actor_id for a in train_workers()}  # workers of finished runs may linger

    def kill_a_worker_after_the_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline:
            # A checkpoint folder appears while it is being written, before the controller registers
            # it; a kill then rightly restarts from scratch. The second folder means the first is in.
            fs.invalidate_cache()
            if len(fs.glob(f"{checkpoints}/checkpoint_*")) >= 2:
                workers = [a for a in train_workers() if a.actor_id not in earlier]
                if workers:
                    os.kill(workers[0].pid, signal.SIGKILL)  # a real crash of a training worker
                    killed.append(workers[0].pid)
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=kill_a_worker_after_the_first_checkpoint)
    thread.start()
    # The kill lands after step 4's checkpoint; 8 more steps keep it mid-run even under load.
    train.run(train_cfg(data, splats, out, "steps=12", "report_every=2", "checkpoint_every=2", "max_failures=2"))
    thread.join()
    assert killed, "no training worker was killed"
    history = _history(out)
    assert [h["step"] for h in history] == list(range(2, 13, 2))
    # The group restarted from a checkpoint (not from scratch) and carried on to the end.
    restarts = {h["resumed_from"] for h in history} - {0}
    assert restarts and all(r % 2 == 0 and 0 < r < 12 for r in restarts), (killed, history)
    model, meta = load_model(storage.join(out, "model"))
    assert meta["arch"] and sum(p.numel() for p in model.parameters()) > 0
    if where == "s3":  # the same command again (locally in test_interrupts, slow): one Ray Train start fewer here
        # the resumed run's schedule is its config's, not the rate saved in the optimiser state
        train.run(train_cfg(data, splats, out, "steps=14", "report_every=2", "checkpoint_every=2",
                            "lr_decay_at=[12]", "lr_decay=0.5"))
        resumed = _history(out)
        assert resumed[: len(history)] == history  # same run, picked up where it stopped
        assert [(h["step"], h["resumed_from"]) for h in resumed[len(history):]] == [(14, 12)]
        assert [h["lr"] for h in resumed[-2:]] == pytest.approx([3e-3, 1.5e-3])


def test_gt_depths_of_stacks_without_depth_is_a_config_error(tmp_path):
    import dataclasses

    src = focalstack.split_prefix(tiny_dataset(tmp_path / "d"), "train")
    stacks = [dataclasses.replace(st, depth=None) for st in focalstack.read_stacks(src)]
    prefix = str(tmp_path / "nogt" / "train")
    focalstack.write_stacks(stacks, prefix)
    with pytest.raises(ConfigError, match="needs GT depth"):
        train.gt_depths(prefix)
