"""The loss terms on hand-made maps: zeros where the maps agree, the values worked out by hand."""

import numpy as np
import pytest
import torch

from dfd_ray import losses
from dfd_ray.optics import coc_gain_px


def test_thin_lens_consistency_is_zero_for_a_consistent_stack():
    depth = torch.full((1, 3, 4, 4), 0.5)
    focus = torch.tensor([[0.2, 0.5, 1.0]])
    gain = coc_gain_px(focus, torch.tensor(2.9e-3), torch.tensor(1.0), torch.tensor(12e-6))
    coc = gain[..., None, None] * (1 / depth - 1 / focus[..., None, None]).abs()
    coc_term, depth_term = losses.thin_lens_consistency(coc, depth, focus, gain)
    assert float(coc_term) == pytest.approx(0, abs=1e-5) and float(depth_term) == 0
    coc_term, _ = losses.thin_lens_consistency(coc + 1.0, depth, focus, gain)
    assert float(coc_term) == pytest.approx(1.0, rel=1e-5)


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


def test_coc_teacher_weighs_pixels_by_confidence_and_scores_the_error_scale():
    coc, target = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])
    scale, conf = torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.0])
    coc_term, scale_term = losses.coc_teacher(coc, scale, target, conf)
    assert float(coc_term) == pytest.approx(1.0)  # |1 - 2| where the confidence is 1; the other pixel weighs 0
    assert float(scale_term) == pytest.approx(1.0 / 0.5 + np.log(0.5))  # Laplace: |e| / b + log b
    coc = coc.clone().requires_grad_()
    losses.coc_teacher(coc, scale.requires_grad_(), target, conf)[1].backward()
    assert coc.grad is None or float(coc.grad.abs().sum()) == 0  # the scale term leaves the CoC alone


def test_side_teacher_is_the_weighted_cross_entropy():
    logit, near = torch.tensor([0.0, 0.0, 2.0]), torch.tensor([1.0, 0.0, 1.0])
    weight = torch.tensor([1.0, 1.0, 0.0])
    assert float(losses.side_teacher(logit, near, weight)) == pytest.approx(np.log(2))


def test_smoothness_is_zero_for_a_flat_map_and_cheaper_across_an_image_edge():
    image = torch.zeros(1, 3, 4, 4)
    assert float(losses.edge_aware_smoothness(torch.full((1, 4, 4), 0.7), image)) == 0
    step = torch.zeros(1, 4, 4)
    step[..., 2:] = 1.0  # a jump between columns 1 and 2
    flat_image = float(losses.edge_aware_smoothness(step, image))
    image[..., 2:] = 1.0  # the image jumps there too
    assert float(losses.edge_aware_smoothness(step, image)) == pytest.approx(flat_image * np.exp(-10))


def test_posterior_nll_reads_the_target_between_bins_and_weighs_by_confidence():
    u = torch.linspace(10.0, 1.0 / 3, 128)
    log_post = torch.randn(2, 128, 3, 4)
    log_p = torch.log_softmax(log_post, 1)
    conf = torch.ones(2, 3, 4)
    at_bin = losses.posterior_nll(log_post, u, torch.full((2, 3, 4), 1.0 / float(u[5])), conf)
    assert float(at_bin) == pytest.approx(float(-log_p[:, 5].mean()), rel=1e-5)
    halfway = losses.posterior_nll(log_post, u, torch.full((2, 3, 4), 2.0 / float(u[5] + u[6])), conf)
    assert float(halfway) == pytest.approx(float(-(log_p[:, 5] + log_p[:, 6]).mean() / 2), rel=1e-5)
    conf[0] = 0.0
    assert float(losses.posterior_nll(log_post, u, torch.full((2, 3, 4), 1.0 / float(u[5])), conf)) == \
        pytest.approx(float(-log_p[1, 5].mean()), rel=1e-5)


def test_posterior_nll_does_not_fold_depth_noise_into_blur_at_the_focus_plane():
    """A teacher whose inverse depth scatters symmetrically around the focus plane: an L1 on its
    CoC is minimised by a CoC of 0.67 σ G (the median of the folded noise), the posterior NLL by a CoC at most
    half that (a Laplace around c is not a Gaussian, so its best fit to a Gaussian spread is not
    exactly c = 0)."""
    from dfd_ray.models.nets import DepthNet, ModelConfig

    net = DepthNet(ModelConfig())
    s, gain, sigma_u = 0.5, 0.7, 0.6  # m, px·m, 1/m
    target_u = 1.0 / s + sigma_u * torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(0))
    target_coc = gain * (target_u - 1.0 / s).abs()
    cocs = torch.linspace(0.0, 1.0, 21)
    l1 = [float((target_coc - c).abs().mean()) for c in cocs]
    focus, g = torch.tensor([s]), torch.tensor([gain])
    nll = []
    for c in cocs:
        best = min(float(losses.posterior_nll(
            net.coc_log_likelihood(torch.full((1, 1, 4000), float(c)), torch.full((1, 1, 4000), b), focus, g),
            net.inverse_depths, 1.0 / target_u, torch.ones(1, 1, 4000))) for b in (0.1, 0.2, 0.3, 0.4, 0.6))
        nll.append(best)
    assert float(cocs[int(np.argmin(l1))]) == pytest.approx(0.67 * sigma_u * gain, abs=0.06)
    assert float(cocs[int(np.argmin(nll))]) <= 0.5 * float(cocs[int(np.argmin(l1))])
