import math

import numpy as np
import pytest
import torch

from dfd_ray import optics

F, N = 2.9e-3, 1.0
PITCH = 3.1e-3 / 256


def test_fod500_hand_computed_coc():
    # A = f/N = 2.9 mm; c = A f |d - s| / (d (s - f)) = 2.9e-3 * 2.9e-3 * 2.9 / (3 * 0.0971)
    c = optics.coc(3.0, 0.1, F, N)
    assert c == pytest.approx(2.9e-3 * 2.9e-3 * 2.9 / (3.0 * 0.0971), rel=1e-12)
    assert c == pytest.approx(83.7e-6, abs=0.05e-6)
    assert optics.coc_px(3.0, 0.1, F, N, PITCH) == pytest.approx(6.914, abs=1e-3)
    assert optics.get_preset("fod500").coc_px(3.0, 0.1) == pytest.approx(6.914, abs=1e-3)


def test_nyuv2_hand_computed_coc():
    # f = 50 mm, N = 8: A = 6.25 mm; s = 1 m, d = 2 m: c = 6.25e-3 * 0.05 * 1 / (2 * 0.95)
    c = optics.coc(2.0, 1.0, 50e-3, 8.0)
    assert c == pytest.approx(6.25e-3 * 0.05 / 1.9, rel=1e-12)
    assert optics.coc_px(2.0, 1.0, 50e-3, 8.0, 12e-6) == pytest.approx(c / 12e-6)


def test_signed_coc_sign_and_focus():
    assert optics.coc_signed(3.0, 0.3, F, N) > 0  # behind focus
    assert optics.coc_signed(0.2, 0.3, F, N) < 0  # in front
    assert optics.coc(0.3, 0.3, F, N) == 0.0
    k = optics.coc_gain(0.3, F, N)
    assert optics.coc_signed(1e9, 0.3, F, N) == pytest.approx(k, rel=1e-6)


@pytest.mark.parametrize("kind", ["float", "numpy", "torch"])
def test_signed_inverse_round_trip(kind):
    depths = np.geomspace(0.1, 3.0, 50)
    s = 0.3
    if kind == "float":
        for d in depths:
            c = optics.coc_signed(float(d), s, F, N)
            assert optics.depth_from_signed_coc(c, s, F, N) == pytest.approx(d, rel=1e-9)
        return
    x = depths if kind == "numpy" else torch.tensor(depths, dtype=torch.float64)
    back = optics.depth_from_signed_coc(optics.coc_signed(x, s, F, N), s, F, N)
    assert type(back) is type(x)
    np.testing.assert_allclose(np.asarray(back), depths, rtol=1e-9)


def test_unsigned_inverse_gives_both_roots():
    s = 0.3
    near_d, far_d = 0.2, optics.depth_from_coc(optics.coc(0.2, s, F, N), s, F, N)[1]
    c = optics.coc(near_d, s, F, N)
    near, far = optics.depth_from_coc(c, s, F, N)
    assert near == pytest.approx(near_d, rel=1e-12)
    assert far > s and optics.coc(far, s, F, N) == pytest.approx(c, rel=1e-9)
    assert far == far_d
    # A blur larger than any point behind focus can make: only the near root exists.
    k = optics.coc_gain(s, F, N)
    near, far = optics.depth_from_coc(np.array([0.5 * k, 2 * k]), s, F, N)
    assert np.isfinite(far[0]) and far[1] == np.inf and np.all(near < s)
    near_px, far_px = optics.depth_from_coc_px(c / PITCH, s, F, N, PITCH)
    assert near_px == pytest.approx(near_d, rel=1e-9)


def test_torch_gradients_match_analytic():
    d = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    c = optics.coc_signed(d, s, F, N)
    c.sum().backward()
    k = (F / N) * F / (0.3 - F)
    np.testing.assert_allclose(d.grad.numpy(), k * 0.3 / d.detach().numpy() ** 2, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda dd, ss: optics.coc_px(dd, ss, F, N, PITCH), (d, s))
    c = torch.tensor([1e-5, 2e-5], dtype=torch.float64, requires_grad=True)
    # eps scaled to the input: a CoC of 1e-5 m would move 10% under the default 1e-6
    assert torch.autograd.gradcheck(lambda cc: optics.depth_from_signed_coc(cc, 0.3, F, N), (c,), eps=1e-11)


def test_pinhole_form_agrees():
    # c_px = A * v/p * |1/d - 1/s| with v the lens-to-sensor distance
    d, s = 1.2, 0.3
    v = optics.image_distance(s, F)
    assert optics.coc_px(d, s, F, N, PITCH) == pytest.approx((F / N) * (v / PITCH) * abs(1 / d - 1 / s), rel=1e-12)


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: optics.coc(1.0, 0.002, F, N), "focus_distance must exceed focal_length"),
        (lambda: optics.coc(1.0, F, F, N), "focus_distance must exceed focal_length"),
        (lambda: optics.coc(0.0, 0.3, F, N), "depth must be positive"),
        (lambda: optics.coc(np.array([1.0, -1.0]), 0.3, F, N), "depth must be positive"),
        (lambda: optics.coc(torch.tensor([float("nan")]), 0.3, F, N), "depth must be positive"),
        (lambda: optics.coc_px(1.0, 0.3, F, N, 0.0), "pixel_size must be positive"),
        (lambda: optics.coc(1.0, 0.3, F, -2.0), "f_number must be positive"),
        (lambda: optics.depth_from_coc(-1e-6, 0.3, F, N), "CoC must be >= 0"),
        (lambda: optics.depth_from_signed_coc(1.0, 0.3, F, N), "for a finite depth"),
        (lambda: optics.get_preset("canon"), "valid choices"),
    ],
)
def test_bad_input_errors(call, needle):
    with pytest.raises(optics.OpticsError, match=needle):
        call()


def test_presets():
    fod = optics.get_preset("fod500")
    assert fod.focus_distances == [0.1, 0.15, 0.3, 0.7, 1.5]
    assert fod.pixel_size == pytest.approx(12.109e-6, rel=1e-3)
    nyu = optics.get_preset("nyuv2")
    assert (nyu.focal_length, nyu.f_number, nyu.pixel_size) == (50e-3, 8.0, 12e-6)
    assert (nyu.height, nyu.width) == (240, 320)
    nyu.focus_distances.append(9.0)  # a copy: the registry is untouched
    assert optics.get_preset("nyuv2").focus_distances == [1.0, 1.5, 2.5, 4.0, 6.0]
    assert math.isclose(optics.aperture_diameter(50e-3, 8.0), 6.25e-3)


# --- every consumer of the thin lens agrees with optics ------------------------------------------

def test_gain_and_inverse_agree_with_the_coc_across_kinds():
    s, p, depths = 0.3, PITCH, np.array([0.12, 0.25, 0.3, 0.9, 2.5])
    g = optics.coc_gain_px(s, F, N, p)
    np.testing.assert_allclose(optics.coc_px_at_inverse_depth(1 / depths, s, g), optics.coc_px(depths, s, F, N, p),
                               rtol=1e-12)
    g_torch = optics.coc_gain_px(torch.tensor([s], dtype=torch.float64), torch.tensor(F, dtype=torch.float64),
                                 torch.tensor(N, dtype=torch.float64), torch.tensor(p, dtype=torch.float64))
    assert g_torch.item() == pytest.approx(g, rel=1e-12)
    c = optics.coc_px(depths, s, F, N, p)
    side = np.sign(1 / depths - 1 / s)
    np.testing.assert_allclose(1 / optics.inverse_depth_at_coc_px(c, side, s, g), depths, rtol=1e-10)


def test_splat_projection_coc_is_the_optics_signed_coc():
    from dfd_ray.splat.project import thin_lens_coc_px
    from dfd_ray.splat.scene import Camera

    camera = Camera(width=8, height=8, focal_length=F, f_number=N, pixel_size=PITCH)
    depths = torch.tensor([0.12, 0.3, 0.9, 2.5], dtype=torch.float64)
    got = thin_lens_coc_px(depths, 0.3, F / N, camera)
    want = optics.coc_signed_px(depths, 0.3, F, N, PITCH)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert optics.gain_px_of_aperture(0.3, F, F / N, PITCH) == pytest.approx(optics.coc_gain_px(0.3, F, N, PITCH))
    assert (thin_lens_coc_px(depths, 0.3, 0.0, camera) == 0).all()  # aperture 0: a pinhole


def test_depthnet_likelihood_peaks_at_the_optics_coc():
    from dfd_ray.models import ModelConfig
    from dfd_ray.models.nets import DepthNet

    net = DepthNet(ModelConfig())
    s, d = torch.tensor([0.3]), 0.9
    g = optics.coc_gain_px(s, torch.tensor(F), torch.tensor(N), torch.tensor(PITCH))
    coc = torch.full((1, 2, 2), float(optics.coc_px(d, 0.3, F, N, PITCH)))
    log_lik = net.coc_log_likelihood(coc, torch.full_like(coc, 0.05), s, g)[0, :, 0, 0]
    far = net.inverse_depths < 1 / 0.3
    best = net.inverse_depths[far][log_lik[far].argmax()]
    step = float(net.inverse_depths[0] - net.inverse_depths[1])
    assert abs(float(best) - 1 / d) <= step


def test_side_metrics_inverse_is_the_optics_inverse():
    from dfd_ray.metrics import side_metrics

    s, p = 0.3, PITCH
    gt = np.array([[0.15, 0.2], [0.6, 1.2]], np.float32)
    coc = optics.coc_px(gt.astype(np.float64), s, F, N, p).astype(np.float32)
    out = side_metrics(gt, coc, gt, s, optics.coc_gain_px(s, F, N, p), (0.1, 3.0))
    assert out["abs_rel_true_side"] == pytest.approx(0.0, abs=1e-5)
    assert out["abs_rel_true_coc"] == pytest.approx(0.0, abs=1e-5)


def test_lens_is_the_thin_lens_of_this_module_for_floats_and_tensors():
    lens = optics.Lens(F, N, PITCH)
    depths, s = np.array([0.12, 0.3, 0.9, 2.5]), 0.3
    assert lens.aperture == pytest.approx(F / N, rel=1e-15)
    assert lens.gain_px(s) == optics.coc_gain_px(s, F, N, PITCH)
    np.testing.assert_array_equal(lens.coc_px(depths, s), optics.coc_px(depths, s, F, N, PITCH))
    near, far = lens.depths_at_coc_px(lens.coc_px(depths, s), s)
    np.testing.assert_allclose(np.where(depths < s, near, far), depths, rtol=1e-10)
    per_image = optics.Lens(torch.tensor([F, F]), torch.tensor([N, 2 * N]), torch.tensor([PITCH, PITCH]))
    gains = per_image.gain_px(torch.tensor([s, s]))
    assert gains.tolist() == pytest.approx([lens.gain_px(s), lens.gain_px(s) / 2], rel=1e-6)
    assert lens.summary() == {"focal_length_m": F, "f_number": N, "pixel_size_m": PITCH}


@pytest.mark.parametrize("field", ["focal_length", "f_number", "pixel_size"])
def test_a_lens_with_a_non_positive_value_names_it(field):
    values = {"focal_length": F, "f_number": N, "pixel_size": PITCH, field: 0.0}
    with pytest.raises(optics.OpticsError, match=field):
        optics.Lens(**values)


def test_every_lens_holder_hands_out_the_same_lens():
    from dfd_ray.focalstack import FocalStack
    from dfd_ray.importers.fod500 import Fod500ImportConfig
    from dfd_ray.splat.scene import Camera

    preset = optics.get_preset("fod500")
    stack = FocalStack("a", np.zeros((1, 4, 6, 3), np.uint8), np.array([0.3]), preset.focal_length, preset.f_number,
                       preset.pixel_size)
    imported = Fod500ImportConfig(src="s", out="o").camera()
    holders = [preset.lens, stack.lens, imported.lens, Camera.from_stack(stack).lens]
    assert all(h == holders[0] for h in holders)
    assert Camera.from_stack(stack).width == 6 and Camera.from_lens(preset.lens, 6, 4) == Camera.from_stack(stack)
