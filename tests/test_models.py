"""The networks and the lens decode, without Ray: shapes, ranges, the AbsRel-optimal decode, lens fusion."""

import math

import numpy as np
import pytest
import torch

from dfd_ray import optics, storage
from dfd_ray.config import ConfigError
from dfd_ray.models import DFDModel, ModelConfig, load_model, save_model
from dfd_ray.optics import coc_gain_px
from dfd_ray.filters import gaussian_blur
from dfd_ray.models.nets import blur_bands, parameter_count, weighted_median

FOD500 = (2.9e-3, 1.0, 3.1e-3 / 256)  # focal length [m], f-number, pixel pitch [m]


def _lens(n: int, focus) -> tuple[torch.Tensor, optics.Lens]:
    return torch.as_tensor(focus, dtype=torch.float32), optics.Lens(*(torch.full((n,), v) for v in FOD500))


def test_outputs_have_their_shapes_and_stay_in_range():
    cfg = ModelConfig()
    model = DFDModel(cfg).eval()
    assert parameter_count(model.sdnet) > 500_000
    out = model(torch.rand(2, 3, 20, 28), *_lens(2, [0.1, 1.5]))
    for key in ("coc", "coc_scale", "side_logit", "depth"):
        assert out[key].shape == (2, 20, 28), key
    assert out["log_likelihood"].shape == (2, cfg.depth_bins, 20, 28)
    out = {k: v.detach() for k, v in out.items()}
    assert float(out["coc"].min()) >= 0 and float(out["coc_scale"].min()) >= cfg.min_scale_px
    assert float(out["depth"].min()) >= cfg.min_depth - 1e-6 and float(out["depth"].max()) <= cfg.max_depth + 1e-6


def test_eval_widens_the_error_scale_by_the_calibration_and_decodes_with_it():
    torch.manual_seed(0)
    image, (focus, lens) = torch.rand(2, 3, 24, 24), _lens(2, [0.15, 0.7])
    model = DFDModel(ModelConfig(widths=(4, 8), side_widths=(4,), depth_bins=32, scale_calibration=1.0,
                                 context_sigma_px=0.0)).eval()
    with torch.no_grad():
        plain = model(image, focus, lens)
        model.cfg.scale_calibration = 2.5
        wide = model(image, focus, lens)
        gain = lens.gain_px(focus)
        depth, _ = model.depthnet.decode_photo(plain["coc"], 2.5 * plain["coc_scale"], plain["side_logit"], focus, gain)
    assert torch.equal(wide["coc"], plain["coc"]) and torch.equal(wide["side_logit"], plain["side_logit"])
    assert torch.allclose(wide["coc_scale"], 2.5 * plain["coc_scale"])
    assert torch.allclose(wide["depth"], depth) and not torch.allclose(wide["depth"], plain["depth"])
    # Training sees the scale the nets learn, whatever the calibration.
    torch.manual_seed(0)
    train_a = DFDModel(ModelConfig(widths=(4, 8), side_widths=(4,), depth_bins=32, scale_calibration=1.0)).train()
    torch.manual_seed(0)
    train_b = DFDModel(ModelConfig(widths=(4, 8), side_widths=(4,), depth_bins=32, scale_calibration=2.5)).train()
    assert torch.equal(train_a(image, focus, lens)["coc_scale"], train_b(image, focus, lens)["coc_scale"])


@pytest.mark.parametrize("key, value", [("scale_calibration", 0.0), ("fusion_correlation", 1.5)])
def test_model_config_rejects_bad_calibration_constants(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        ModelConfig(**{key: value})


def test_coc_gain_is_the_thin_lens_gain():
    s = torch.tensor([0.1, 0.3, 1.5])
    gain = coc_gain_px(s, *(torch.tensor(v) for v in FOD500))
    d = 0.7
    expected = optics.coc_px(d, s.numpy().astype(np.float64), *FOD500)
    assert (gain * (1 / d - 1 / s).abs()).numpy() == pytest.approx(expected, rel=1e-5)


def test_blur_bands_fall_with_blur_and_ignore_contrast():
    torch.manual_seed(0)
    sharp = torch.rand(1, 1, 48, 48).expand(1, 3, 48, 48)
    blurred = gaussian_blur(sharp, 1.5)
    fine = lambda x: blur_bands(x, (0.7, 1.4, 2.8), 4.0)[0, 0, 8:-8, 8:-8].abs().mean()  # noqa: E731
    assert float(fine(blurred)) < 0.5 * float(fine(sharp))
    # Contrast normalisation: the same texture at a third of the contrast gives the same bands.
    low = 0.5 + (sharp - 0.5) / 3
    assert torch.allclose(blur_bands(low, (0.7,), 4.0), blur_bands(sharp, (0.7,), 4.0), atol=0.05)


def _expected_abs_rel(depths: torch.Tensor, p: torch.Tensor, d: float) -> float:
    return float((p * (d - depths).abs() / depths).sum())


@pytest.mark.parametrize("masses", [[0.7, 0.3], [0.3, 0.7], [0.5, 0.5], [0.2, 0.5, 0.3]])
def test_decode_returns_the_abs_rel_optimal_depth_of_a_hand_made_posterior(masses):
    cfg = ModelConfig(min_depth=0.1, max_depth=3.0, depth_bins=512)
    model = DFDModel(cfg)
    depths = 1.0 / model.depthnet.inverse_depths  # ascending
    # Posterior: a few narrow modes (e.g. one on each side of a focus plane), masses as given.
    centres = [0.15, 0.6, 2.0][: len(masses)]
    post = torch.zeros(cfg.depth_bins)
    for c, m in zip(centres, masses):
        k = int((depths - c).abs().argmin())
        post[k] += m
    model.depthnet.log_prior.zero_()  # a flat prior: the likelihood is the posterior
    log_lik = torch.log(post.clamp_min(1e-30)).view(1, -1, 1, 1)
    decoded = float(model.depthnet.decode(log_lik)[0, 0, 0])
    grid = torch.linspace(0.1, 3.0, 2901)
    costs = torch.tensor([_expected_abs_rel(depths, post, float(d)) for d in grid])
    best = float(costs.min())
    # The decode's expected AbsRel is the optimum's, up to the bins' spacing.
    assert _expected_abs_rel(depths, post, decoded) <= best + 0.02


def test_weighted_median_interpolates_and_passes_gradients():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], requires_grad=True)
    m = weighted_median(values, w.view(4, 1, 1))
    # cumulative 0.1, 0.3, 0.6, 1.0: half is reached 2/3 of the way from 2 to 3
    assert float(m) == pytest.approx(2 + 2 / 3)
    m.sum().backward()
    assert w.grad.abs().sum() > 0
    assert float(weighted_median(values, torch.tensor([0.9, 0.1, 0, 0]).view(4, 1, 1))) == 1.0


def _exact_model(cfg: ModelConfig) -> DFDModel:
    model = DFDModel(cfg)
    model.depthnet.log_prior.zero_()
    return model


def _likelihood(model: DFDModel, coc: float, focus: float, side_logit: float = 0.0) -> torch.Tensor:
    gain = coc_gain_px(torch.tensor([focus]), *(torch.tensor([v]) for v in FOD500))
    net, s = model.depthnet, torch.tensor([focus])
    return (net.coc_log_likelihood(torch.full((1, 2, 2), coc), torch.full((1, 2, 2), 0.05), s, gain)
            + net.side_log_likelihood(torch.full((1, 2, 2), side_logit), s))


@pytest.mark.parametrize("depth", [0.2, 0.45])
def test_lens_fusion_recovers_a_depth_on_either_side_of_a_focus_plane(depth):
    # Slices focused at 0.3 m and 0.7 m: one CoC alone has a root on each side of its focus plane;
    # both together have one depth in common.
    model = _exact_model(ModelConfig(depth_bins=512))
    cocs = {s: float(optics.coc_px(depth, s, *FOD500)) for s in (0.3, 0.7)}
    log_lik = torch.cat([_likelihood(model, c, s) for s, c in cocs.items()])
    fused = model.fuse(log_lik)
    assert float(fused.mean()) == pytest.approx(depth, rel=0.02)
    # The 0.3 m slice alone cannot tell: its CoC has a root on each side in range, equally likely,
    # and the AbsRel-optimal choice between them is the near one (its errors weigh 1/t less) -
    # wrong for the 0.45 m surface, which fusion gets right.
    near, far = optics.depth_from_coc_px(cocs[0.3], 0.3, *FOD500)
    assert ModelConfig().min_depth < near < 0.3 < far < ModelConfig().max_depth
    alone = model.depthnet.decode(_likelihood(model, cocs[0.3], 0.3))
    assert float(alone.mean()) == pytest.approx(near, rel=0.02)


def test_fusion_counts_correlated_photos_as_fewer_independent_ones():
    # S photos whose errors correlate by rho carry the evidence of S / (1 + (S - 1) rho) independent ones.
    model = DFDModel(ModelConfig(depth_bins=8, fusion_correlation=0.5))
    net, log_lik = model.depthnet, torch.randn(3, 8, 2, 2)
    assert torch.allclose(net.fused_log_likelihood(log_lik, 0.0), log_lik.sum(0))  # independent: the product
    assert torch.allclose(net.fused_log_likelihood(log_lik, 1.0), log_lik.mean(0))  # one photo's worth
    assert torch.allclose(net.fused_log_likelihood(log_lik), log_lik.sum(0) / 2.0)  # the model's own rho
    assert torch.allclose(net.fused_log_likelihood(log_lik[:1], 0.9), log_lik[0])  # a lone photo is not tempered
    assert torch.allclose(model.fuse(log_lik), net.decode(log_lik.sum(0) / 2.0))
    # Tempering keeps the mode and widens the posterior: less mass near the fused depth.
    sharp, tempered = net.posterior(net.fused_log_likelihood(log_lik, 0.0)), net.posterior(net.fused_log_likelihood(log_lik))
    assert torch.equal(sharp.argmax(0), tempered.argmax(0))
    assert bool((sharp.amax(0) >= tempered.amax(0) - 1e-6).all())


def test_mass_within_sums_the_posterior_near_a_depth():
    model = DFDModel(ModelConfig(min_depth=0.25, max_depth=1.0, depth_bins=4))  # u = 4, 3, 2, 1 m^-1
    post = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1).expand(4, 1, 2).clone()
    depth = torch.tensor([[1 / 3, 1 / 1.4]])  # u = 3: bins 4, 3, 2 within ±1; u = 1.4: bins 2 and 1 within ±0.65
    mass = model.depthnet.mass_within(post, depth, 1.0)
    assert mass[0, 0] == pytest.approx(0.6) and mass[0, 1] == pytest.approx(0.7)
    assert model.depthnet.mass_within(post, depth, 0.65)[0].tolist() == pytest.approx([0.2, 0.7])
    # The decode is the posterior's AbsRel-optimal depth.
    log_lik = torch.randn(4, 3, 3)
    assert torch.allclose(model.depthnet.decode(log_lik), model.depthnet.median_depth(model.depthnet.posterior(log_lik)))


def test_side_logit_picks_the_root_and_a_splat_depth_pulls_the_decode():
    model = _exact_model(ModelConfig(depth_bins=512))
    s, d_near = 0.3, 0.2
    c = float(optics.coc_px(d_near, s, *FOD500))
    _, d_far = optics.depth_from_coc_px(c, s, *FOD500)
    near = model.depthnet.decode(_likelihood(model, c, s, side_logit=8.0))
    far = model.depthnet.decode(_likelihood(model, c, s, side_logit=-8.0))
    assert float(near.mean()) == pytest.approx(d_near, rel=0.02)
    assert float(far.mean()) == pytest.approx(d_far, rel=0.02)
    # A confident splat depth on the far root wins over a neutral side; zero confidence changes nothing.
    neutral = _likelihood(model, c, s)
    splat = torch.full((1, 2, 2), d_far)
    assert float(model.depthnet.decode(neutral, splat, torch.ones(1, 2, 2)).mean()) == pytest.approx(d_far, rel=0.05)
    assert torch.equal(model.depthnet.decode(neutral, splat, torch.zeros(1, 2, 2)), model.depthnet.decode(neutral))


def test_prior_from_sample_depths_counts_the_nearest_bin():
    model = DFDModel(ModelConfig(depth_bins=4, min_depth=0.25, max_depth=1.0))
    assert model.depthnet.inverse_depths.tolist() == [4.0, 3.0, 2.0, 1.0]
    model.depthnet.set_prior(torch.tensor([0.25, 0.26, 0.5, 1.0, 1.0, 1.0, 0.34]), uniform_mix=0.0)
    assert model.depthnet.log_prior.exp().tolist() == pytest.approx([2 / 7, 1 / 7, 1 / 7, 3 / 7])


def test_outputs_depend_only_on_the_receptive_field():
    # Eval mode: a crop's centre equals the whole image's there (batch norm is a fixed affine map).
    torch.manual_seed(1)
    model = DFDModel(ModelConfig()).eval()
    image = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        whole = model(image, *_lens(1, [0.3]))["depth"][0]
        part = model(image[..., 32:128, 32:128], *_lens(1, [0.3]))["depth"][0]
    assert torch.allclose(whole[64:96, 64:96], part[32:64, 32:64], atol=1e-4)


def test_near_logit_is_the_posterior_side_and_trains_only_the_side_net():
    model = _exact_model(ModelConfig(depth_bins=512))
    net, s = model.depthnet, torch.tensor([0.3])
    gain = coc_gain_px(s, *(torch.tensor([v]) for v in FOD500))
    c = float(optics.coc_px(0.2, 0.3, *FOD500))  # roots at 0.2 m and ~0.6 m, both in range
    coc_lik = net.coc_log_likelihood(torch.full((1, 2, 2), c), torch.full((1, 2, 2), 0.05), s, gain)
    # Flat prior over inverse depth, neutral side: both roots hold the same mass.
    assert float(net.near_logit(coc_lik, torch.zeros(1, 2, 2), s).abs().max()) < 0.05
    assert float(net.near_logit(coc_lik, torch.full((1, 2, 2), 3.0), s).mean()) == pytest.approx(3.0, abs=0.05)
    # The prior's odds count once: a prior that favours near shifts the posterior side by its odds.
    net.log_prior.copy_(torch.where(net.inverse_depths > 1 / 0.3, 0.0, -1.0))
    assert float(net.near_logit(coc_lik, torch.zeros(1, 2, 2), s).mean()) == pytest.approx(1.0, abs=0.05)
    # In the full model the side loss reaches the side net, not SDNet.
    model = DFDModel(ModelConfig()).train()
    out = model(torch.rand(2, 3, 24, 24), *_lens(2, [0.15, 0.7]))
    out["near_logit"].sum().backward()
    assert model.depthnet.side.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.sdnet.parameters())


def test_a_focus_plane_at_the_end_of_the_grid_has_one_side_and_finite_odds():
    model = DFDModel(ModelConfig()).eval()  # grid 0.1-3 m: s = 0.1 m has nothing in front
    s = torch.tensor([0.1, 0.3])
    assert model.depthnet.has_both_sides(s).tolist() == [False, True]
    with torch.no_grad():
        out = model(torch.rand(2, 3, 16, 16), *_lens(2, s))
    assert torch.isfinite(out["near_logit"]).all() and float(out["near_logit"][0].max()) == -30.0


def test_the_nets_see_only_the_gains_they_were_trained_on_and_the_lens_decodes_with_the_true_one():
    torch.manual_seed(0)
    model = DFDModel(ModelConfig(widths=(4, 8), side_widths=(4, 8), depth_bins=16, context_sigma_px=0.0)).eval()
    assert model.gain_range.tolist() == [0.0, math.inf]  # untrained: no bound
    focus = torch.tensor([0.1, 0.3])
    f1 = optics.Lens(*FOD500)
    f2 = optics.Lens(FOD500[0], 2.0, FOD500[2])  # half the aperture: half the gain
    image = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        unbounded = model(image, focus, f2)
        model.set_gain_range(f1.gain_px(torch.tensor([0.1, 0.15, 0.3, 0.7, 1.5])))
        assert model.gain_range.tolist() == pytest.approx([float(f1.gain_px(1.5)), float(f1.gain_px(0.1))])
        out = model(image, focus, f2)
        seen = torch.full((2,), float(f1.gain_px(1.5)))  # every f/2 gain lies below the range
        coc, scale = model.sdnet(image, focus, seen)
        side = model.depthnet.side_logit(coc, scale, image, focus, seen)
        expected = (model.depthnet.coc_log_likelihood(coc, model.cfg.scale_calibration * scale, focus, f2.gain_px(focus))
                    + model.depthnet.side_log_likelihood(side, focus))
    assert torch.allclose(out["coc"], coc) and torch.allclose(out["side_logit"], side)
    assert not torch.allclose(unbounded["coc"], coc)  # the gain plane moves what the nets read
    assert torch.allclose(out["log_likelihood"], expected, atol=1e-5)
    with torch.no_grad():  # inside the range the gain passes unchanged
        assert torch.allclose(model(image, focus, f1)["coc"], model.sdnet(image, focus, f1.gain_px(focus))[0])


def test_a_model_saved_without_a_gain_range_loads_unbounded(tmp_path):
    model = DFDModel(ModelConfig(widths=(4, 8), side_widths=(4,), depth_bins=8))
    model.set_gain_range(torch.tensor([0.5, 0.7]))
    save_model(model, str(tmp_path / "m"))
    assert load_model(str(tmp_path / "m"))[0].gain_range.tolist() == pytest.approx([0.5, 0.7])
    state = {k: v for k, v in model.state_dict().items() if k != "gain_range"}
    torch.save(state, tmp_path / "m" / "model.pt")
    assert load_model(str(tmp_path / "m"))[0].gain_range.tolist() == [0.0, math.inf]


def test_weights_saved_in_either_layout_load_channels_last_and_predict_the_same(tmp_path):
    torch.manual_seed(0)
    model = DFDModel(ModelConfig(widths=(4, 8), side_widths=(4,), depth_bins=8)).eval()
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    # A file of NCHW weights, as models saved before the layout change hold them.
    save_model(model, str(tmp_path / "m"))
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m" / "model.pt")
    loaded = load_model(str(tmp_path / "m"))[0]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in loaded.modules() if isinstance(m, torch.nn.Conv2d))
    image, (focus, lens) = torch.rand(2, 3, 20, 28), _lens(2, [0.15, 0.7])
    with torch.no_grad():
        a, b = model(image, focus, lens), loaded(image, focus, lens)
    assert torch.allclose(a["coc"], b["coc"], atol=1e-6) and torch.allclose(a["depth"], b["depth"], atol=1e-6)


@pytest.mark.parametrize("damage, message", [
    ("weights", "model.pt is torn, corrupt"),
    ("meta", "model.json is torn or corrupt"),
])
def test_a_torn_model_file_is_named_in_the_error(tmp_path, damage, message):
    uri = str(tmp_path / "m")
    save_model(DFDModel(ModelConfig(widths=(4, 8), side_widths=(4,), depth_bins=8)), uri)
    name = "model.pt" if damage == "weights" else "model.json"
    whole = storage.read_bytes(f"{uri}/{name}")
    (tmp_path / "m" / name).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=message):
        load_model(uri)


@pytest.mark.parametrize("splat", [False, True])
def test_the_numba_posterior_equals_the_torch_posterior_in_value_and_gradient(splat):
    model = DFDModel(ModelConfig())
    model.depthnet.set_prior(torch.rand(4000, generator=torch.Generator().manual_seed(0)) * 2.9 + 0.1)
    g = torch.Generator().manual_seed(1)
    n, h, w = 10, 12, 12
    focus = torch.tensor([0.1, 0.15, 0.3, 0.7, 1.5], dtype=torch.float64).repeat(2)  # 0.1 m: one side only
    gain = torch.full((n,), 0.70, dtype=torch.float64)
    maps = [torch.rand(n, h, w, generator=g, dtype=torch.float64) * 6,
            torch.rand(n, h, w, generator=g, dtype=torch.float64) * 0.8 + 0.05,
            torch.randn(n, h, w, generator=g, dtype=torch.float64) * 3]
    prior = ((torch.rand(n, h, w, generator=g, dtype=torch.float64) * 2 + 0.1,
              torch.rand(n, h, w, generator=g, dtype=torch.float64)) if splat else (None, None))
    upstream = torch.randn(n, h, w, generator=g, dtype=torch.float64)
    results = {}
    for backend in ("torch", "torch+likelihood", "numba"):  # +likelihood: the caller formed the CoC's
        inputs = [m.clone().requires_grad_() for m in maps]
        given = ({"coc_log_likelihood": model.depthnet.coc_log_likelihood(inputs[0], inputs[1], focus, gain)}
                 if backend.endswith("+likelihood") else {})
        depth, near = model.depthnet.decode_photo(*inputs, focus, gain, *prior, backend=backend.split("+")[0], **given)
        ((depth * upstream).sum() + near.sum()).backward()
        results[backend] = [depth.detach(), near.detach()] + [x.grad for x in inputs]
    assert float(results["numba"][1][:1].max()) == -30.0  # nothing in front of 0.1 m
    for other in ("torch+likelihood", "numba"):
        for name, ref, got in zip(("depth", "near_logit", "dcoc", "dscale", "dside"), results["torch"], results[other]):
            assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max())), (other, name)


def test_near_logit_is_the_side_logit_plus_the_evidence_and_passes_its_gradient_whole():
    # The side factor sigmoid(±z) is one constant per side, so the posterior's side log-odds are
    # z plus the CoC's and prior's own odds, with d/dz = 1: checked against the normalised posterior.
    net = DFDModel(ModelConfig()).depthnet
    g = torch.Generator().manual_seed(2)
    s, gain = torch.tensor([0.3, 0.7]), torch.tensor([0.7, 0.7])
    coc_lik = net.coc_log_likelihood(torch.rand(2, 4, 4, generator=g) * 3, torch.full((2, 4, 4), 0.3), s, gain)
    z = torch.randn(2, 4, 4, generator=g).requires_grad_()
    post = net.posterior(coc_lik + net.side_log_likelihood(z, s))
    near = net._near(s)
    direct = torch.log((post * near).sum(1)) - torch.log((post * (1 - near)).sum(1))
    logit = net.near_logit(coc_lik, z, s)
    assert torch.allclose(logit, direct, atol=1e-4)
    logit.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))
