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
