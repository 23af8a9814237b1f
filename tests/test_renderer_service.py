"""The renderer service on a real local Ray: equality with in-process rendering, autograd bridge,
eviction, fitting on a miss, crash recovery, and bad requests."""

import threading

import numpy as np
import pytest
import torch

from dfd_ray import synth
from dfd_ray.config import load_config
from dfd_ray.focalstack import write_stacks
from dfd_ray.services.pool import RendererPool, RenderLoss, render_requests
from dfd_ray.services.renderer import RendererPoolConfig
from dfd_ray.splat import load_splats, render, save_splats
from tests.splat_helpers import CAM, random_splats

SCENES = ["scene-a", "scene-b", "scene-c"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("splats")
    for i, sid in enumerate(SCENES):
        save_splats(random_splats(120, 20 + i, dtype=torch.float32), str(root / f"{sid}.npz"))
    return str(root)


def local(store, scene_id):
    return load_splats(f"{store}/{scene_id}.npz")[0]


def make_request(seed, scene_id="scene-a", window=None):
    h, w = (window[2], window[3]) if window else (CAM.height, CAM.width)
    rng = np.random.default_rng(seed)
    return {"scene_id": scene_id, "focus_distance": 0.3,
            "coc_map": rng.uniform(0, 3, (h, w)).astype(np.float32),
            "target_image": rng.uniform(0, 0.5, (h, w, 3)).astype(np.float32), "window": window}


def in_process_loss_and_grad(store, request):
    splats = local(store, request["scene_id"])
    if request["window"]:
        splats = splats.with_camera(splats.camera.crop(*request["window"]))
    coc = torch.tensor(request["coc_map"], requires_grad=True)
    loss = (render(splats, coc_map=coc).image - torch.tensor(request["target_image"])).abs().mean()
    loss.backward()
    return float(loss), coc.grad.numpy()


@pytest.fixture
def pool(ray_session, store):
    pool = RendererPool(load_config(RendererPoolConfig, [f"splat_store={store}", "num_actors=2", "num_cpus=0.25"]))
    yield pool
    pool.shutdown()


def test_pool_render_equals_in_process(pool, store):
    for sid in SCENES:
        got = pool.render(sid, focus_distance=0.2)
        want = render(local(store, sid), focus_distance=0.2)
        np.testing.assert_allclose(got["image"], want.image.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["alpha"], want.alpha.numpy(), rtol=1e-5, atol=1e-6)
    window = (2, 3, 10, 12)
    crop = pool.render("scene-b", focus_distance=0.2, window=window)
    full = pool.render("scene-b", focus_distance=0.2)
    np.testing.assert_allclose(crop["image"], full["image"][2:12, 3:15], rtol=1e-5, atol=1e-6)


def test_loss_and_gradient_equal_in_process_autograd(pool, store):
    requests = [make_request(1), make_request(2, "scene-b"), make_request(3, "scene-c", window=(4, 2, 12, 16)),
                make_request(4)]
    got = pool.render_loss_and_grad_batch(requests)
    for request, (loss, grad) in zip(requests, got):
        want_loss, want_grad = in_process_loss_and_grad(store, request)
        assert loss == pytest.approx(want_loss, rel=1e-5)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-8)
        assert np.abs(grad).sum() > 0
    single = pool.render_loss_and_grad(**{k: v for k, v in requests[0].items()})
    assert single[0] == pytest.approx(got[0][0], rel=1e-6)

    # A training step's priors and render losses together: the same answers, one call per actor.
    priors = [{"scene_id": r["scene_id"], "window": r["window"]} for r in requests]
    calls = [s["requests"] for s in pool.stats()]
    step_priors, step_answers = pool.step_batch(priors, requests)
    involved = {pool.actor_index(r["scene_id"]) for r in requests}
    assert [s["requests"] - c for s, c in zip(pool.stats(), calls)] == [int(a in involved) for a in range(len(calls))]
    for (loss, grad), (want_loss, want_grad) in zip(step_answers, got):
        assert loss == pytest.approx(want_loss, rel=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)
    for (depth, conf), (want_depth, want_conf) in zip(step_priors, pool.priors_batch(priors)):
        np.testing.assert_array_equal(depth, want_depth)
        np.testing.assert_array_equal(conf, want_conf)


class CocNet(torch.nn.Module):
    """A tiny image → CoC map network, enough to check that weights move the same way."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, images):  # (B, H, W, 3) → (B, H, W), non-negative pixels
        return torch.nn.functional.softplus(self.conv(images.permute(0, 3, 1, 2)))[:, 0] * 3


def test_remote_render_loss_steps_like_in_process(pool, store):
    requests = [make_request(10), make_request(11, "scene-b"), make_request(12, "scene-c")]
    targets = torch.tensor(np.stack([r["target_image"] for r in requests]))
    scene_ids = [r["scene_id"] for r in requests]
    nets = [CocNet(), CocNet()]
    optimisers = [torch.optim.SGD(n.parameters(), lr=10.0) for n in nets]

    cocs = nets[0](targets)
    loss_remote = RenderLoss.apply(cocs, pool.render_loss_and_grad_batch(render_requests(cocs, targets, scene_ids)))
    loss_remote.backward()
    optimisers[0].step()

    cocs = nets[1](targets)
    losses = [(render(local(store, sid), coc_map=cocs[i]).image - targets[i]).abs().mean() for i, sid in enumerate(scene_ids)]
    loss_local = torch.stack(losses).mean()
    loss_local.backward()
    optimisers[1].step()

    assert float(loss_remote) == pytest.approx(float(loss_local), rel=1e-5)
    before = CocNet()
    for p_remote, p_local, p0 in zip(nets[0].parameters(), nets[1].parameters(), before.parameters()):
        assert not torch.equal(p_remote, p0)  # the step moved the weights ...
        torch.testing.assert_close(p_remote, p_local, rtol=1e-4, atol=1e-6)  # ... as in-process


def test_eviction_and_reload_give_identical_renders(ray_session, store):
    pool = RendererPool(load_config(RendererPoolConfig, [f"splat_store={store}", "scenes_per_actor=1", "num_cpus=0.25"]))
    try:
        first = pool.render("scene-a", focus_distance=0.25)
        pool.render("scene-b", focus_distance=0.25)  # evicts scene-a
        again = pool.render("scene-a", focus_distance=0.25)
        np.testing.assert_array_equal(first["image"], again["image"])
        (stats,) = pool.stats()
        assert stats["scenes"] == ["scene-a"] and stats["evictions"] == 2 and stats["loads"] == 3
        assert stats["requests"] == 3 and stats["latency_ms"]["p50"] > 0
    finally:
        pool.shutdown()


def test_scene_without_splats_is_fitted_and_persisted(ray_session, tmp_path):
    data = tmp_path / "data"
    cfg = load_config(synth.SynthConfig, [f"out={data}", "height=16", "width=16"])
    write_stacks([synth.make_scene(cfg, 0, "train")], str(data / "train"))
    store = tmp_path / "store"
    pool_cfg = load_config(RendererPoolConfig, [f"splat_store={store}", f"data={data}", "num_cpus=0.25",
                                                "fit.steps=4", "fit.warmup_steps=1"])
    pool = RendererPool(pool_cfg)
    try:
        out = pool.render("synth-train-0-000000", focus_distance=0.3)
        assert out["image"].shape == (16, 16, 3)
        assert (store / "synth-train-0-000000.npz").exists()
        assert pool.stats()[0]["fits"] == 1
        with pytest.raises(ValueError, match="unknown scene 'nope'"):
            pool.render("nope", focus_distance=0.3)
    finally:
        pool.shutdown()


def test_killed_actor_restarts_and_every_request_is_answered(ray_session, store):
    import ray

    pool = RendererPool(load_config(RendererPoolConfig, [f"splat_store={store}", "num_cpus=0.25"]))
    try:
        requests = [make_request(100 + i, SCENES[i % 3]) for i in range(24)]
        expected = [in_process_loss_and_grad(store, r) for r in requests]
        results = [None] * len(requests)
        started = threading.Event()

        def stream():
            for i, r in enumerate(requests):
                results[i] = pool.render_loss_and_grad(**r)
                started.set()

        thread = threading.Thread(target=stream)
        thread.start()
        started.wait(timeout=60)
        ray.kill(pool.actors[0], no_restart=False)  # a crash, as far as the pool can tell
        thread.join(timeout=300)
        assert not thread.is_alive()
        for (loss, grad), (want_loss, want_grad) in zip(results, expected):
            assert loss == pytest.approx(want_loss, rel=1e-5)
            np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-8)
        assert pool.stats()[0]["requests"] < len(requests)  # the restarted actor started from zero
    finally:
        pool.shutdown()


def test_bad_requests_get_errors_and_the_pool_keeps_serving(pool):
    good = make_request(7)
    bad = {
        "unknown scene": dict(good, scene_id="missing"),
        "is (3, 3), expected (20, 24)": dict(good, coc_map=np.ones((3, 3), np.float32)),
        "NaN or infinite": dict(good, coc_map=np.full((20, 24), np.nan, np.float32)),
        "negative CoC": dict(good, coc_map=-np.ones((20, 24), np.float32)),
        "target_image is (20, 24), expected (20, 24, 3)": dict(good, target_image=np.ones((20, 24), np.float32)),
        "bad window": dict(good, window=(15, 0, 10, 10)),
    }
    for needle, request in bad.items():
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            pool.render_loss_and_grad(**request)
    with pytest.raises(ValueError, match="request 1: scene 'scene-a': coc_map holds negative"):
        pool.render_loss_and_grad_batch([good, bad["negative CoC"]])
    loss, grad = pool.render_loss_and_grad(**good)
    assert np.isfinite(loss) and grad.shape == (20, 24)
    assert sum(s["errors"] for s in pool.stats()) == len(bad) + 1
