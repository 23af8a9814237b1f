"""Training on a real local Ray: DDP steps, checkpoint/resume, a killed worker, and evaluation."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from dfd_ray import evaluate, focalstack, losses, storage, streaming, synth, teachers, train
from dfd_ray.config import ConfigError, load_config
from dfd_ray.models import DFDModel, ModelConfig, load_model, save_model
from dfd_ray.optics import coc_gain_px

TERMS = ("teacher_coc", "teacher_scale", "side", "lens_coc", "lens_depth", "render", "prior", "smooth")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    synth.run(load_config(synth.SynthConfig, [f"out={root}", "n_scenes=2", "n_test=1", "height=32", "width=32", "seed=3"]))
    return str(root)


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


def test_thin_lens_consistency_is_zero_for_a_consistent_stack():
    depth = torch.full((1, 3, 4, 4), 0.5)
    focus = torch.tensor([[0.2, 0.5, 1.0]])
    gain = coc_gain_px(focus, torch.tensor(2.9e-3), torch.tensor(1.0), torch.tensor(12e-6))
    coc = gain[..., None, None] * (1 / depth - 1 / focus[..., None, None]).abs()
    coc_term, depth_term = losses.thin_lens_consistency(coc, depth, focus, gain)
    assert float(coc_term) == pytest.approx(0, abs=1e-5) and float(depth_term) == 0
    coc_term, _ = losses.thin_lens_consistency(coc + 1.0, depth, focus, gain)
    assert float(coc_term) == pytest.approx(1.0, rel=1e-5)


def test_training_state_round_trip_is_exact(tmp_path):
    model = DFDModel(ModelConfig())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    average = train.WeightAverage(model, 0.9)
    for _ in range(2):
        out = model(torch.rand(1, 3, 16, 16), *(torch.tensor([v]) for v in (0.3, 2.9e-3, 1.0, 12e-6)))
        (out["depth"].mean() + out["coc"].mean()).backward()
        optimiser.step()
        average.update(model)
    train.save_training_state(str(tmp_path), model, optimiser, 7, [{"step": 7}], "self", average)
    fresh = DFDModel(ModelConfig())
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh_average = train.WeightAverage(fresh, 0.9)
    step, history = train.load_training_state(str(tmp_path), fresh, fresh_opt, fresh_average)
    assert step == 7 and history == [{"step": 7}] and fresh_average.updates == 2
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(average.model.state_dict().values(), fresh_average.model.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = optimiser.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name])
    loaded, meta = load_model(str(tmp_path))  # a checkpoint serves the average, not the online weights
    assert meta["trained_steps"] == 7 and meta["weights"] == "ema"
    assert all(torch.equal(a, b) for a, b in zip(average.model.state_dict().values(), loaded.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_checkpoint_without_average_holds_the_weights_once_and_an_average_can_start_from_it(tmp_path):
    model = DFDModel(ModelConfig())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    train.save_training_state(str(tmp_path), model, optimiser, 3, [], "gt")
    assert not (tmp_path / train.ONLINE_WEIGHTS).exists()  # model.pt is the optimiser's weights
    fresh = DFDModel(ModelConfig())
    average = train.WeightAverage(fresh, 0.9)
    assert train.load_training_state(str(tmp_path), fresh, torch.optim.Adam(fresh.parameters()), average)[0] == 3
    for a, b, c in zip(model.state_dict().values(), fresh.state_dict().values(), average.model.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert average.updates == 0 and load_model(str(tmp_path))[1]["weights"] == "online"


def test_weight_average_warms_up_then_decays():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = train.WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model)  # decay min(0.5, 2/11): 0 + (1 - 2/11) * (1 - 0)
    assert float(average.model.weight) == pytest.approx(9 / 11)
    for _ in range(20):
        average.update(model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    before = float(average.model.weight)
    average.update(model)  # past the warm-up: decay 0.5
    assert float(average.model.weight) == pytest.approx(0.5 * before + 0.5 * 3.0)
    assert not average.model.weight.requires_grad and average.updates == 22


def test_weight_average_serves_the_latest_batch_norm_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    average = train.WeightAverage(model, decay=0.99)
    model.train()(torch.randn(4, 1, 3, 3) + 5.0)  # moves the running statistics
    average.update(model)
    assert torch.equal(average.model[1].running_mean, model[1].running_mean)
    assert float(average.model[1].running_mean.abs().sum()) > 0


def test_depth_error_kinds_and_their_minimisers():
    d, t = torch.tensor([0.2, 1.0]), torch.tensor([0.1, 2.0])
    assert losses.depth_error(d, t, "rel").tolist() == pytest.approx([1.0, 0.5])
    assert losses.depth_error(d, t, "log").tolist() == pytest.approx([np.log(2), np.log(2)])
    with pytest.raises(ValueError, match="'abs'"):
        losses.depth_error(d, t, "abs")
    # One pixel whose depth is 0.12 m or 0.5 m with equal odds (which side of the focus plane):
    # "rel" picks the near depth (expected AbsRel 0.5 * 0.38 / 0.5 = 0.38, against 0.5 * 0.38 / 0.12
    # = 1.58 for 0.5 m);
    # "log" is flat between the two.
    targets = torch.tensor([0.12, 0.5])
    grid = torch.linspace(0.1, 0.6, 501)
    rel = torch.stack([losses.depth_error(g.expand(2), targets, "rel").mean() for g in grid])
    assert float(grid[rel.argmin()]) == pytest.approx(0.12, abs=1e-3)
    log = torch.stack([losses.depth_error(g.expand(2), targets, "log").mean() for g in grid])
    inside = (grid >= 0.12) & (grid <= 0.5)
    assert float(log[inside].max() - log[inside].min()) < 1e-5
    # the splat prior weighs the error by the fit's confidence
    conf = torch.tensor([1.0, 0.0])
    assert float(losses.splat_prior(d, t, conf, "rel")) == pytest.approx(0.5)


def test_too_few_stacks_for_the_workers_fails_before_cluster_work(data, splats, tmp_path):
    from dfd_ray.config import ConfigError

    with pytest.raises(ConfigError, match="holds 2 training stack.*need at least 6"):
        train.run(train_cfg(data, splats, tmp_path / "run", "num_workers=3", "batch_size=2"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("term", [t for t in TERMS if t not in ("render", "prior")])
def test_each_term_of_the_step_falls_when_trained_alone(data, term):
    # Plain PyTorch, no Ray: samples cut as the Ray pipeline cuts them, teachers from the stacks.
    stacks = list(focalstack.read_stacks(f"{data}/train"))
    samples = [streaming.make_sample(st, 32, np.random.default_rng(i), teacher=teachers.stack_depth(st))
               for i, st in enumerate(stacks)]
    batch = {k: torch.from_numpy(v) for k, v in streaming.stack_samples(samples).items()}
    weights = {k: float(k == term) for k in train.LossWeights.__dataclass_fields__}
    cfg = train.TrainConfig(data="d", out="o", loss=train.LossWeights(**weights))
    torch.manual_seed(0)
    model = DFDModel(ModelConfig(widths=(8, 16), side_widths=(8, 16)))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    values = []
    for _ in range(12):
        loss, logged, _ = train.training_step(model, batch, cfg, None)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        values.append(logged[term])
    assert values[-1] < values[0], (term, values)


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


def test_gt_supervision_needs_no_teachers_or_renderer_and_init_starts_from_a_model(ray_session, tmp_path):
    data = tmp_path / "data"
    synth.run(load_config(synth.SynthConfig, [f"out={data}", "n_scenes=2", "n_test=0", "height=32", "width=32", "seed=4"]))
    torch.manual_seed(5)
    save_model(DFDModel(ModelConfig()), str(tmp_path / "start"))
    # Fine-tuning starts from a model's weights: at a vanishing rate they stay the model's.
    result = train.run(train_cfg(str(data), str(tmp_path / "splats"), tmp_path / "run", "steps=4", "supervision=gt",
                                 f"init={tmp_path / 'start'}", "lr=1e-12"))
    history = _history(tmp_path / "run")
    assert [h["step"] for h in history] == [2, 4] and result["renderer"] == []
    assert not list(data.glob("train/teachers/*")) and not (tmp_path / "splats").exists()
    start, tuned = load_model(str(tmp_path / "start"))[0], load_model(str(tmp_path / "run" / "model"))[0]
    weights = [(a, b) for (k, a), b in zip(start.state_dict().items(), tuned.state_dict().values()) if "weight" in k]
    assert weights and all(torch.allclose(a, b, atol=1e-6) for a, b in weights)


def test_a_bad_init_model_is_a_config_error_before_cluster_work(data, splats, tmp_path):
    with pytest.raises(ConfigError, match="'init'.*is not a dfd-ray model"):
        train.run(train_cfg(data, splats, tmp_path / "run", f"init={tmp_path / 'nothing'}"))
    assert not (tmp_path / "run").exists()


def test_learning_rate_steps_down_after_each_decay_step():
    cfg = train.TrainConfig(lr=1e-2, lr_decay_at=[3, 5], lr_decay=0.5)
    assert [train.learning_rate(cfg, done) for done in range(7)] == [1e-2] * 3 + [5e-3] * 2 + [2.5e-3] * 2
    assert train.learning_rate(train.TrainConfig(lr=1e-3, lr_decay_at=[]), 10**6) == 1e-3


@pytest.mark.parametrize("override, key", [("lr_decay=0", "lr_decay"), ("lr_decay=1.5", "lr_decay"),
                                           ("lr_decay_at=[0]", "lr_decay_at"), ("lr=0", "lr"),
                                           ("ema_decay=1", "ema_decay"), ("ema_decay=-0.1", "ema_decay"),
                                           ("depth_loss=abs", "depth_loss"), ("loss.side=-1", "loss")])
def test_bad_learning_rate_schedule_is_a_config_error(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(train.TrainConfig, ["data=d", "out=o", override])


def test_an_embedded_ray_too_small_for_its_data_pipeline_is_a_config_error(data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the command line starts its own Ray
    proc = subprocess.run([sys.executable, "-m", "dfd_ray.cli", "train", "--data", data, "--out", str(tmp_path / "out"),
                           "ray_cpus=1", "num_workers=1", "worker_cpus=0.5", "batch_size=1"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2 and "'ray_cpus'" in proc.stderr and "less than the 1 CPU" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_loss_with_no_term_switched_on_is_a_config_error():
    with pytest.raises(ConfigError, match="'loss'.*one at least > 0"):
        train.TrainConfig(data="d", out="o", loss=train.LossWeights(**{k: 0.0 for k in train.LossWeights.__dataclass_fields__}))


def test_resume_continues_at_the_saved_step(ray_session, data, splats, tmp_path):
    out = tmp_path / "run"
    train.run(train_cfg(data, splats, out, "steps=4", "report_every=2", "checkpoint_every=2"))
    first = _history(out)
    # the resumed run's schedule is its config's, not the rate saved in the optimiser state
    train.run(train_cfg(data, splats, out, "steps=6", "report_every=2", "checkpoint_every=2",
                        "lr_decay_at=[4]", "lr_decay=0.5"))
    resumed = _history(out)
    assert resumed[: len(first)] == first  # same run, picked up where it stopped
    assert [h["step"] for h in resumed] == [2, 4, 6]
    assert [h["resumed_from"] for h in resumed] == [0, 0, 4]
    assert [h["lr"] for h in resumed] == pytest.approx([3e-3, 3e-3, 1.5e-3])


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_killed_worker_resumes_from_checkpoint_and_finishes(ray_session, data, splats, tmp_path, where, request):
    """On S3 the data, the teachers, the checkpoints and the model all live in the bucket."""
    import os
    import signal

    import ray
    from ray.util.state import list_actors

    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        synth.run(load_config(synth.SynthConfig, [f"out={bucket}/data", "n_scenes=2", "n_test=1", "height=32",
                                                  "width=32", "seed=3"]))
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
