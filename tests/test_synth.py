import numpy as np
import pytest
import torch

from dfd_ray import defocus, optics, synth
from dfd_ray.config import load_config
from dfd_ray.focalstack import read_stacks

FOD = optics.get_preset("fod500")


def _cfg(tmp_path, *overrides):
    return load_config(synth.SynthConfig, [f"out={tmp_path}", *overrides])


def test_deterministic_for_a_seed(tmp_path):
    a = synth.make_scene(_cfg(tmp_path, "height=32", "width=40"), 3, "train")
    b = synth.make_scene(_cfg(tmp_path, "height=32", "width=40"), 3, "train")
    c = synth.make_scene(_cfg(tmp_path, "height=32", "width=40", "seed=1"), 3, "train")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.depth, b.depth)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (5, 32, 40, 3)


def test_run_writes_splits_and_config(tmp_path):
    result = synth.run(_cfg(tmp_path, "n_scenes=3", "n_test=2", "height=24", "width=24"))
    assert result["stacks"] == {"train": 3, "test": 2}
    train = list(read_stacks(str(tmp_path / "train")))
    test = list(read_stacks(str(tmp_path / "test")))
    assert len(train) == 3 and len(test) == 2
    assert {s.scene_id for s in train}.isdisjoint({s.scene_id for s in test})
    assert (tmp_path / "config.yaml").read_text().count("n_scenes: 3") == 1
    for s in train + test:
        assert s.aif is not None and s.depth is not None
        assert np.all((s.depth >= FOD.min_depth - 1e-6) & (s.depth <= FOD.max_depth + 1e-6))


def test_image_size_changes_field_of_view_never_pitch(tmp_path):
    small = synth.make_scene(_cfg(tmp_path, "height=32", "width=32"), 0, "train")
    large = synth.make_scene(_cfg(tmp_path, "height=96", "width=64"), 0, "train")
    assert small.pixel_size == large.pixel_size == FOD.pixel_size
    assert large.images.shape[1:3] == (96, 64)


def test_depths_uniform_in_inverse_depth(tmp_path):
    cfg = _cfg(tmp_path, "height=16", "width=16", "max_shapes=0", "noise_std=0")
    inv = np.array([1.0 / synth.make_scene(cfg, i, "train").depth.mean() for i in range(120)])
    lo, hi = 1 / FOD.max_depth, 1 / FOD.min_depth
    quartiles = np.histogram(inv, bins=4, range=(lo, hi))[0] / len(inv)
    assert np.all(quartiles > 0.13) and np.all(quartiles < 0.37), quartiles


def _sharpness(image: np.ndarray) -> float:
    grey = image.astype(np.float64).mean(-1)
    return float((np.diff(grey, axis=0) ** 2).mean() + (np.diff(grey, axis=1) ** 2).mean())


def test_sharpest_slice_is_the_one_in_focus(tmp_path):
    """Fronto-parallel scenes: the slice with the smallest predicted CoC has the most detail."""
    cfg = _cfg(tmp_path, "height=48", "width=48", "max_shapes=0", "slant_probability=0", "noise_std=0")
    checked = 0
    for i in range(12):
        stack = synth.make_scene(cfg, i, "train")
        d = float(stack.depth.mean())
        cocs = [FOD.coc_px(d, s) for s in FOD.focus_distances]
        order = np.argsort(cocs)
        if cocs[order[1]] - cocs[order[0]] < 0.5:  # two slices almost equally sharp: no clear answer
            continue
        checked += 1
        assert np.argmax([_sharpness(im) for im in stack.images]) == order[0], (d, cocs)
    assert checked >= 6


def _point_scene(h, w, inv_depth):
    # A point on grey, so that nothing clips at 0 or 1 and the PSF reads off exactly.
    color = np.full((h, w, 3), 0.5, np.float32)
    color[h // 2, w // 2] = 1.0
    return [defocus.Surface(color, np.ones((h, w), np.float32), np.full((h, w), inv_depth, np.float32))]


def test_point_in_focus_stays_sharp_and_off_focus_spreads_as_predicted():
    depth = 0.3
    out = defocus.render_focal_stack(_point_scene(41, 41, 1 / depth), FOD.focus_distances, FOD.lens)
    psf = (out[..., 0] - 0.5) / 0.5
    in_focus = FOD.focus_distances.index(0.3)
    assert psf[in_focus, 20, 20] == pytest.approx(1.0, abs=1e-5)
    yy, xx = np.mgrid[:41, :41] - 20
    for k, s in enumerate(FOD.focus_distances):
        energy = psf[k].sum()
        assert energy == pytest.approx(1.0, abs=1e-4)  # blur moves light, never loses it
        c = FOD.coc_px(depth, s)
        var_x = float((psf[k] * xx**2).sum() / energy)
        # A disc has per-axis variance c²/16, and the discrete PSF keeps exactly that.
        assert var_x == pytest.approx(c**2 / 16, rel=0.03, abs=2e-3), (s, c)
        radius = np.sqrt(xx**2 + yy**2)
        assert np.abs(psf[k][radius > c / 2 + 2.5]).sum() < 1e-6  # nothing beyond the disc and its interpolant


def test_disc_kernel_is_continuous_below_one_pixel():
    variances = []
    for c in np.linspace(0, 1.5, 16):
        k = defocus.disc_kernel(float(c))
        x = np.arange(k.shape[0]) - k.shape[0] // 2
        variances.append(float((k.sum(0) * x**2).sum()))
        assert k.sum() == pytest.approx(1.0, abs=1e-6)
        assert variances[-1] == pytest.approx(c**2 / 16, rel=0.15, abs=1e-3)
    assert np.all(np.diff(variances) > 0)  # sub-pixel blur is still visible and monotone
    with pytest.raises(ValueError, match="disc diameter"):
        defocus.disc_kernel(-1.0)


def test_occluding_edge_blurs_over_the_background():
    """A near square focused far away spills its colour past its own edge; in focus it does not."""
    h = w = 48
    far, near = 1 / 1.5, 1 / 0.1
    bg = defocus.Surface(np.zeros((h, w, 3), np.float32), np.ones((h, w), np.float32), np.full((h, w), far, np.float32))
    alpha = np.zeros((h, w), np.float32)
    alpha[12:36, 12:36] = 1
    fg = defocus.Surface(np.ones((h, w, 3), np.float32), alpha, np.full((h, w), near, np.float32))
    out = defocus.render_focal_stack([bg, fg], [0.1, 1.5], FOD.lens)
    outside = out[:, 24, 37, 0]  # one pixel outside the square's right edge, on the background
    assert outside[0] == pytest.approx(0.0, abs=1e-6)  # focused on the square: crisp edge
    assert outside[1] > 0.1  # focused on the background: the blurred square covers it
    inside = out[:, 24, 34, 0]
    assert inside[0] == pytest.approx(1.0, abs=1e-6) and inside[1] < 1.0


def test_fft_blur_equals_direct_convolution(monkeypatch):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((3, 4, 30, 41)).astype(np.float32))
    cocs = [[1.0, 9.5, 14.0], [0.0, 3.0, 16.5]]  # (slice, slab) diameters, kernels up to 21 px
    kernels = [[defocus.disc_kernel(c) for c in row] for row in cocs]
    k = max(kk.shape[0] for row in kernels for kk in row)
    weight = np.zeros((2, 3, k, k), np.float32)
    for i, row in enumerate(kernels):
        for j, kk in enumerate(row):
            o = (k - kk.shape[0]) // 2
            weight[i, j, o:o + kk.shape[0], o:o + kk.shape[0]] = kk
    w = torch.from_numpy(weight)
    monkeypatch.setattr(defocus, "FFT_MIN_KERNEL", 10_000)
    direct = defocus._blur_slabs(x, w)
    monkeypatch.setattr(defocus, "FFT_MIN_KERNEL", 1)
    fft = defocus._blur_slabs(x, w)
    assert direct.shape == fft.shape == (2, 3, 4, 30, 41)
    assert torch.allclose(direct, fft, atol=2e-5)
