"""Context at decode: CoC readings shared with colour-alike neighbours (dfd_ray.models.context)."""

import math

import pytest
import torch

from dfd_ray import optics
from dfd_ray.config import ConfigError
from dfd_ray.models import DFDModel, ModelConfig
from dfd_ray.models.context import share_coc, window


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_one_pixel_equals_the_formula_by_hand(backend):
    # A 1 x 3 photo of one colour, readings 0, 1, 2 px of scale 1 px, sigma 1 px (offsets to 2 px).
    image = torch.full((1, 3, 1, 3), 0.5)
    coc = torch.tensor([[[0.0, 1.0, 2.0]]])
    out = share_coc(coc, torch.ones_like(coc), image, sigma_px=1.0, colour_sigma=0.05, strength=1.0, backend=backend)
    g1, g2 = math.exp(-0.5), math.exp(-2.0)
    shared = (g1 * 1.0 + g2 * 2.0) / (g1 + g2)  # pixel 0's neighbours, at 1 and 2 px
    # Its shared precision: strength x the neighbours' weight over their spatial mass inside the photo = 1.
    assert float(out[0, 0, 0]) == pytest.approx((0.0 + shared) / 2, rel=1e-5)
    shared_mid = (g1 * 0.0 + g1 * 2.0) / (2 * g1)
    assert float(out[0, 0, 1]) == pytest.approx((1.0 + shared_mid) / 2, rel=1e-5)


def test_uncertain_pixels_take_their_colour_region_and_nothing_crosses_a_colour_edge():
    image = torch.zeros(1, 3, 16, 16)
    image[:, 0, :, :8] = 0.8  # left half red
    image[:, 2, :, 8:] = 0.8  # right half blue
    coc = torch.where(torch.arange(16) < 8, 1.0, 3.0).expand(1, 16, 16).clone()
    scale = torch.full_like(coc, 0.2)
    for y, x in ((5, 2), (10, 13)):  # one unreadable pixel in each half: any reading, a wide scale
        coc[0, y, x], scale[0, y, x] = 9.0, 20.0
    out = share_coc(coc, scale, image, sigma_px=4.0, colour_sigma=0.05, strength=256.0)
    assert float(out[0, 5, 2]) == pytest.approx(1.0, abs=1e-3)
    assert float(out[0, 10, 13]) == pytest.approx(3.0, abs=1e-3)
    # The confident pixels keep their readings, right up to the edge between the halves.
    mask = scale == 0.2
    assert torch.allclose(out[mask], coc[mask], atol=1e-3)


def test_off_leaves_the_coc_as_it_is_and_the_output_depends_only_on_its_window():
    torch.manual_seed(0)
    image, coc, scale = torch.rand(1, 3, 40, 40), 3 * torch.rand(1, 40, 40), 0.1 + torch.rand(1, 40, 40)
    assert torch.equal(share_coc(coc, scale, image, 0.0, 0.05, 256.0), coc)
    out = share_coc(coc, scale, image, 4.0, 0.2, 16.0)
    assert not torch.allclose(out, coc)
    radius, step = window(4.0)
    assert (radius, step) == (8, 1)
    far = coc.clone()
    far[0, :, 20:] = 7.0  # changed only beyond the window of the pixels in columns < 12
    changed = share_coc(far, scale, image, 4.0, 0.2, 16.0)
    assert torch.equal(changed[0, :, :20 - radius], out[0, :, :20 - radius])
    assert not torch.equal(changed[0, :, 20 - radius:20], out[0, :, 20 - radius:20])


def test_eval_publishes_and_decodes_the_shared_coc_and_training_never_shares():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 24, 24)
    focus = torch.tensor([0.15, 0.7])
    lens = optics.Lens(*(torch.full((2,), v) for v in (2.9e-3, 1.0, 3.1e-3 / 256)))
    small = dict(widths=(4, 8), side_widths=(4,), depth_bins=32)
    model = DFDModel(ModelConfig(**small, context_sigma_px=0.0)).eval()
    with torch.no_grad():
        plain = model(image, focus, lens)
        model.cfg.context_sigma_px = 3.0
        shared = model(image, focus, lens)
        expected = share_coc(plain["coc"], plain["coc_scale"], image, 3.0, model.cfg.context_colour_sigma,
                             model.cfg.context_strength)
        depth, _ = model.depthnet.decode_photo(expected, plain["coc_scale"], plain["side_logit"], focus,
                                               lens.gain_px(focus))
    assert torch.allclose(shared["coc"], expected) and not torch.allclose(shared["coc"], plain["coc"])
    assert torch.equal(shared["side_logit"], plain["side_logit"])  # the side net reads the CoC it was trained on
    assert torch.allclose(shared["depth"], depth)
    model.train()
    assert torch.equal(model(image, focus, lens)["coc"], model.sdnet(image, focus, lens.gain_px(focus))[0])


@pytest.mark.parametrize("key, value", [("context_sigma_px", -1.0), ("context_colour_sigma", 0.0),
                                        ("context_strength", 0.0)])
def test_model_config_rejects_bad_context_constants(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        ModelConfig(**{key: value})


@pytest.mark.parametrize("sigma", [1.0, 3.0, 9.0])
def test_numba_and_torch_backends_agree(sigma):
    torch.manual_seed(1)
    image = torch.rand(2, 3, 21, 30)
    image[:, :, 5:15, 8:20] = 0.4  # a flat region beside texture
    coc, scale = 4 * torch.rand(2, 21, 30), 0.05 + 2 * torch.rand(2, 21, 30)
    reference = share_coc(coc, scale, image, sigma, 0.1, 64.0, backend="torch")
    compiled = share_coc(coc, scale, image, sigma, 0.1, 64.0, backend="numba")
    assert torch.allclose(compiled, reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(reference, coc)
