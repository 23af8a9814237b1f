"""SDNet (one image → CoC map and its uncertainty) and DepthNet (CoC → metric depth through the lens).

Lens encoding. The CoC of a point at depth d is c = G |1/d - 1/s| pixels, with G = A v / p the
lens's CoC gain in pixel·metres (A aperture, v image distance, p pixel pitch; docs/design.md
§2). Both networks see the focus distance s and G as constant input planes (log-scaled), G held
within the gains the model was trained on (`DFDModel.set_gain_range`).

SDNet reads blur. Besides the image it sees three difference-of-Gaussian luminance bands divided
by the local contrast: the ratio of fine to coarse detail is what blur changes, and dividing by
the contrast keeps it while removing how strongly the surface is textured. It predicts a CoC c
(pixels, >= 0) and the scale b of a Laplace error around it (pixels).

DepthNet decodes depth through the thin lens, with no free-form depth regression: over a grid of
inverse depths u_k it forms the posterior

    log p_k = log prior_k - |c - G |u_k - 1/s|| / b  + log sigmoid(±z)

where the prior is a depth histogram (set from the training teachers) and z a side logit its
small U-Net predicts from the image and the CoC (+ for the bins in front of the focus plane, -
behind), trained so that the posterior's side (`near_logit`) matches the teacher's. Equal blur has one depth on each side of s; the prior and z choose between them. The
depth is the AbsRel-optimal point of the posterior: its median weighted by 1/t (`weighted_median`),
the same statistic as the benchmark's best constant. Metric scale comes from G and s alone (needed
for a model to carry over to another lens and pitch; one trained on a single camera does not,
docs/benchmarks.md). A splat depth, where given, adds one more factor
(a log-normal around it, weighted by its confidence); `DFDModel.fuse` multiplies the likelihoods
of several photos of one scene, which settles the side physically.

Every output depends only on its receptive field (batch norm is a fixed affine map in eval mode),
so tiles of a photo and the whole photo give the same depth away from tile seams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfd_ray import optics
from dfd_ray.config import require
from dfd_ray.filters import gaussian_blur, local_variance
from dfd_ray.models import posterior_numba
from dfd_ray.models.context import share_coc

ARCH = "lens-posterior-v2"  # written to model.json; a model of another architecture fails to load by name
LOGIT_CAP = 30.0  # |near_logit| bound: sigmoid(30) is 1 to float precision


@dataclass
class ModelConfig:
    widths: tuple[int, ...] = (24, 48, 96, 192)  # SDNet U-Net channels per level
    side_widths: tuple[int, ...] = (16, 32, 64)  # DepthNet's side-logit U-Net channels per level
    min_depth: float = 0.1  # metres: the posterior's grid spans [min_depth, max_depth]
    max_depth: float = 3.0  # metres; the far end of the posterior's grid
    depth_bins: int = 128  # inverse-depth bins of the posterior, uniform in 1/d
    max_coc_px: float = 24.0  # CoC predictions saturate softly here (pixels)
    min_scale_px: float = 0.05  # floor of the predicted CoC error scale b (pixels)
    band_sigmas_px: tuple[float, ...] = (0.7, 1.4, 2.8)  # difference-of-Gaussian bands (pixels)
    contrast_sigma_px: float = 4.0  # window of the local contrast the bands are divided by (pixels)
    prior_sigma_log: float = 0.1  # width of a splat-depth factor, in log depth
    fusion_correlation: float = 0.0  # of one scene's photos' CoC errors, in [0, 1]: tempers lens fusion (jobs/bench_fusion.py)
    scale_calibration: float = 1.0  # > 0: eval and inference widen the CoC error scale b by it (docs/design.md §8; jobs/bench_fusion.py)
    context_sigma_px: float = 24.0  # eval and inference share CoC readings with colour-alike neighbours this far (Gaussian sigma, pixels; 0 = off; models/context.py)
    context_colour_sigma: float = 0.05  # sRGB distance at which a neighbour's colour stops counting as alike
    context_strength: float = 256.0  # > 0: weight of the neighbours' shared reading against a pixel's own

    def __post_init__(self) -> None:
        require(0.0 <= self.fusion_correlation <= 1.0, "model.fusion_correlation", f"must be in [0, 1], got {self.fusion_correlation}")
        require(self.scale_calibration > 0, "model.scale_calibration", f"must be > 0, got {self.scale_calibration}")
        require(self.context_sigma_px >= 0, "model.context_sigma_px", f"must be >= 0, got {self.context_sigma_px}")
        require(self.context_colour_sigma > 0, "model.context_colour_sigma", f"must be > 0, got {self.context_colour_sigma}")
        require(self.context_strength > 0, "model.context_strength", f"must be > 0, got {self.context_strength}")


def lens_planes(focus_distance: torch.Tensor, gain: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N,) focus distances [m] and CoC gains [px·m] → (N, 2, H, W) constant input planes."""
    feats = torch.stack([torch.log(focus_distance), torch.log(gain)], dim=1)
    return feats[:, :, None, None].expand(-1, -1, height, width)


def blur_bands(image: torch.Tensor, sigmas_px: tuple[float, ...], contrast_sigma_px: float,
               eps: float = 0.01) -> torch.Tensor:
    """(N, 3, H, W) sRGB in [0, 1] → (N, len(sigmas), H, W): luminance bands G(σ_{k-1}) - G(σ_k)
    (σ_0 = 0) divided by the local standard deviation of the luminance (window σ = contrast_sigma_px).
    `eps` (in units of full scale, about the sensor noise) keeps flat regions from being amplified."""
    y = image.mean(1, keepdim=True)
    levels = [y] + [gaussian_blur(y, s) for s in sigmas_px]
    std = torch.sqrt(local_variance(y, contrast_sigma_px) + eps**2)
    return torch.cat([levels[k] - levels[k + 1] for k in range(len(sigmas_px))], dim=1) / std


class _Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """A plain U-Net; any input size (padded to a multiple of 2^(levels-1) internally)."""

    def __init__(self, c_in: int, c_out: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c = c_in
        for w in widths:
            self.down.append(_Block(c, w))
            c = w
        self.up = nn.ModuleList(_Block(widths[i] + widths[i + 1], widths[i]) for i in range(len(widths) - 1))
        self.head = nn.Conv2d(widths[0], c_out, 1)
        # Channels-last (NHWC) weights and activations: oneDNN's CPU convolutions run faster on
        # them than on NCHW (docs/benchmarks.md, "Channels-last convolutions").
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** (len(self.down) - 1)
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate").contiguous(memory_format=torch.channels_last)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x)[..., :h, :w]


class SDNet(nn.Module):
    """One defocused image (N, 3, H, W) in [0, 1] + lens → (CoC (N, H, W) px >= 0, error scale b (N, H, W) px)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = UNet(3 + len(cfg.band_sigmas_px) + 2, 2, cfg.widths)

    def forward(self, image: torch.Tensor, focus_distance: torch.Tensor,
                gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bands = blur_bands(image, self.cfg.band_sigmas_px, self.cfg.contrast_sigma_px)
        x = torch.cat([image * 2 - 1, bands, lens_planes(focus_distance, gain, *image.shape[-2:])], dim=1)
        raw_coc, raw_scale = self.net(x).unbind(1)
        coc = self.cfg.max_coc_px * torch.tanh(F.softplus(raw_coc) / self.cfg.max_coc_px)
        return coc, self.cfg.min_scale_px + F.softplus(raw_scale)


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per pixel, the point where the cumulative weight reaches half, linear between grid points.

    values (K,) ascending; weights (..., K, H, W) >= 0, not all 0 → (..., H, W). Differentiable in
    the weights (the crossing moves smoothly with them). With weights p_k / t_k over depths t_k it
    is the depth that minimises the expected |d - t| / t under p: the AbsRel-optimal decode.
    """
    w = weights * (1.0 / weights.sum(-3, keepdim=True))
    cdf = torch.cumsum(w, dim=-3)
    k = values.numel()
    j = (cdf < 0.5).sum(-3, keepdim=True).clamp(max=k - 1)  # first grid point at or past half
    i = (j - 1).clamp(min=0)
    cdf_i, cdf_j = cdf.gather(-3, i), cdf.gather(-3, j)
    v = values.view(*([1] * (weights.dim() - 3)), k, 1, 1).expand_as(weights)
    v_i, v_j = v.gather(-3, i), v.gather(-3, j)
    frac = ((0.5 - cdf_i) / (cdf_j - cdf_i).clamp_min(1e-12)).clamp(0, 1)
    frac = torch.where(j == 0, torch.ones_like(frac), frac)  # half the weight on the first point
    return (v_i + frac * (v_j - v_i)).squeeze(-3)


class DepthNet(nn.Module):
    """CoC map, its scale, the image and the lens → the posterior over inverse depth and its AbsRel-optimal depth."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.side = UNet(3 + 2 + 2, 1, cfg.side_widths)
        with torch.no_grad():  # neutral at the start: the prior alone picks the side
            self.side.head.weight.zero_()
            self.side.head.bias.zero_()
        # Inverse-depth grid [1/m], descending, so that the depths 1/u ascend along the bin axis.
        u = torch.linspace(1.0 / cfg.min_depth, 1.0 / cfg.max_depth, cfg.depth_bins)
        self.register_buffer("inverse_depths", u)
        self.register_buffer("log_prior", torch.full((cfg.depth_bins,), -math.log(cfg.depth_bins)))

    def set_prior(self, depths: torch.Tensor, uniform_mix: float = 0.1) -> None:
        """Prior over the grid from sample depths (metres; e.g. the training teachers'), mixed with a
        uniform share so that no depth of the range is ruled out."""
        u = self.inverse_depths
        inv = 1.0 / depths.flatten().float().clamp(self.cfg.min_depth, self.cfg.max_depth)
        nearest = torch.bucketize(-inv, -(u[1:] + u[:-1]) / 2)  # the grid descends: bucketize its negation
        hist = torch.bincount(nearest, minlength=len(u)).float()
        p = (1 - uniform_mix) * hist / hist.sum().clamp_min(1) + uniform_mix / len(u)
        self.log_prior.copy_(torch.log(p))

    def side_logit(self, coc: torch.Tensor, scale: torch.Tensor, image: torch.Tensor, focus_distance: torch.Tensor,
                   gain: torch.Tensor) -> torch.Tensor:
        """(N, H, W): > 0 where the surface lies in front of the focus plane. Fed a detached CoC, so
        that the side is taught by its own loss and SDNet by the CoC's."""
        x = torch.cat([image * 2 - 1, torch.log1p(coc.detach())[:, None], torch.log(scale.detach())[:, None],
                       lens_planes(focus_distance, gain, *image.shape[-2:])], dim=1)
        return self.side(x)[:, 0]

    def _near(self, focus_distance: torch.Tensor) -> torch.Tensor:
        """(N, K, 1, 1): 1 for the bins in front of each photo's focus plane."""
        return (self.inverse_depths[None, :, None, None] > 1.0 / focus_distance[:, None, None, None]).float()

    def coc_log_likelihood(self, coc: torch.Tensor, scale: torch.Tensor, focus_distance: torch.Tensor,
                           gain: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W): log p(c | u_k), a Laplace of scale b around the CoC G |u_k - 1/s|, up to a constant."""
        u = self.inverse_depths[None, :, None, None]
        expected = optics.coc_px_at_inverse_depth(u, focus_distance[:, None, None, None], gain[:, None, None, None])
        # One multiply by -1/b over the grid (a divide and a negation cost twice that, forward and back).
        return (coc[:, None] - expected).abs() * (-1.0 / scale)[:, None] - torch.log(scale)[:, None]

    def side_log_likelihood(self, side_logit: torch.Tensor, focus_distance: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W): the side factor log sigmoid(±z) (+ in front of the focus plane)."""
        z = side_logit[:, None]
        return torch.where(self._near(focus_distance).bool(), F.logsigmoid(z), F.logsigmoid(-z))

    def side_evidence(self, coc_log_likelihood: torch.Tensor, focus_distance: torch.Tensor) -> torch.Tensor:
        """(N, H, W): log-odds of the CoC likelihood times the prior in front of the focus plane
        against behind it (±inf where one side has no bins); not differentiated.

        The side factor sigmoid(±z) is one constant per side, so the posterior's side log-odds are
        exactly z plus this: one pass over the grid, and no gradient of its own to carry."""
        with torch.no_grad():
            log_a = coc_log_likelihood + self.log_prior.view(-1, 1, 1)
            mass = torch.exp(log_a - log_a.amax(dim=1, keepdim=True))
            near = self._near(focus_distance)
            return torch.log((mass * near).sum(1)) - torch.log((mass * (1 - near)).sum(1))

    def near_logit(self, coc_log_likelihood: torch.Tensor, side_logit: torch.Tensor,
                   focus_distance: torch.Tensor) -> torch.Tensor:
        """(N, H, W): log-odds of the posterior's mass in front of the focus plane against behind it,
        within ±LOGIT_CAP (a focus plane at an end of the grid leaves one side empty: ±LOGIT_CAP, and
        `has_both_sides` is False there: no side to learn).

        What the side loss trains: the side net learns the evidence the prior and the CoC do not
        already carry, so nothing is counted twice (a classifier of the side on its own would
        learn the prior's odds again)."""
        return (side_logit + self.side_evidence(coc_log_likelihood, focus_distance)).clamp(-LOGIT_CAP, LOGIT_CAP)

    def has_both_sides(self, focus_distance: torch.Tensor) -> torch.Tensor:
        """(N,) bool: whether the grid holds depths on both sides of each focus plane."""
        near = self._near(focus_distance)[:, :, 0, 0]
        return (near.sum(1) > 0) & (near.sum(1) < near.shape[1])

    def log_posterior(self, log_likelihood: torch.Tensor) -> torch.Tensor:
        """(..., K, H, W): the log-likelihood plus the depth prior over the grid, unnormalised."""
        return log_likelihood + self.log_prior.view(-1, 1, 1)

    def posterior(self, log_likelihood: torch.Tensor, prior_depth: torch.Tensor | None = None,
                  prior_conf: torch.Tensor | None = None) -> torch.Tensor:
        """Log-likelihood (..., K, H, W) (+ an optional depth factor: a depth in metres and its
        confidence, (..., H, W)) → the normalised posterior over the grid (..., K, H, W)."""
        log_post = self.log_posterior(log_likelihood)
        if prior_depth is not None:
            log_depth, weight = self.splat_factor(prior_depth, prior_conf)
            t = torch.log(1.0 / self.inverse_depths).view(-1, 1, 1)
            log_post = log_post - weight[..., None, :, :] * (t - log_depth[..., None, :, :])**2
        return torch.softmax(log_post, dim=-3)

    def splat_factor(self, prior_depth: torch.Tensor, prior_conf: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A depth factor's depth m and confidence (..., H, W) (confidence 1 where None) → (its log depth,
        the weight w of the log-normal -w (log t - log d)², w = conf / (2 σ²), σ = prior_sigma_log)."""
        conf = prior_conf if prior_conf is not None else torch.ones_like(prior_depth)
        return torch.log(prior_depth.clamp_min(1e-3)), 0.5 * conf / self.cfg.prior_sigma_log**2

    def fused_log_likelihood(self, log_likelihood: torch.Tensor, correlation: float | None = None) -> torch.Tensor:
        """Photos of one scene, their log-likelihoods (S, K, H, W) → their joint one (K, H, W): the
        sum divided by 1 + (S - 1) ρ, ρ = `correlation` (default the model's `fusion_correlation`).
        The photos share the scene's texture, so their CoC errors are correlated: S of them carry
        the evidence of S / (1 + (S - 1) ρ) independent photos, and the plain product would be that
        much over-confident (docs/design.md §8)."""
        rho = self.cfg.fusion_correlation if correlation is None else correlation
        return log_likelihood.sum(0) / (1.0 + (log_likelihood.shape[0] - 1) * rho)

    def median_depth(self, posterior: torch.Tensor) -> torch.Tensor:
        """Posterior (..., K, H, W) → its AbsRel-optimal depth (..., H, W) m: the median of the depths
        t_k = 1/u_k weighted by p_k / t_k = p_k u_k."""
        return weighted_median(1.0 / self.inverse_depths, posterior * self.inverse_depths.view(-1, 1, 1))

    def mass_within(self, posterior: torch.Tensor, depth: torch.Tensor, half_width: float) -> torch.Tensor:
        """(..., H, W): the posterior's mass within ±half_width [1/m] of 1/depth."""
        near = (self.inverse_depths.view(-1, 1, 1) - 1.0 / depth[..., None, :, :]).abs() <= half_width
        return (posterior * near).sum(-3)

    def decode(self, log_likelihood: torch.Tensor, prior_depth: torch.Tensor | None = None,
               prior_conf: torch.Tensor | None = None) -> torch.Tensor:
        """Log-likelihood (..., K, H, W) (+ an optional splat depth and confidence (..., H, W)) → depth (..., H, W) m."""
        return self.median_depth(self.posterior(log_likelihood, prior_depth, prior_conf))

    def decode_photo(self, coc: torch.Tensor, scale: torch.Tensor, side_logit: torch.Tensor,
                     focus_distance: torch.Tensor, gain: torch.Tensor, prior_depth: torch.Tensor | None = None,
                     prior_conf: torch.Tensor | None = None, backend: str = "auto",
                     coc_log_likelihood: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One photo's maps (N, H, W): CoC and scale [px], side logit; focus (N,) m, gain (N,) px·m
        (+ an optional splat depth m and confidence) → (depth m, near_logit): `decode` of the CoC
        and side likelihoods, and `near_logit` of the CoC's (the CoC detached there).

        backend "numba" (CPU; "auto" there) walks each pixel's bins in one compiled pass
        (`posterior_numba`, same values and gradients); "torch" forms the (N, K, H, W) posterior,
        from `coc_log_likelihood` where the caller has formed it already."""
        if backend == "auto":
            backend = "numba" if coc.device.type == "cpu" else "torch"
        if backend == "torch":
            coc_lik = (coc_log_likelihood if coc_log_likelihood is not None
                       else self.coc_log_likelihood(coc, scale, focus_distance, gain))
            depth = self.decode(coc_lik + self.side_log_likelihood(side_logit, focus_distance), prior_depth, prior_conf)
            return depth, self.near_logit(coc_lik.detach(), side_logit, focus_distance)
        if backend != "numba":
            raise ValueError(f"backend must be auto, torch or numba, got {backend!r}")
        if prior_depth is None:
            splat_log_depth, splat_weight = torch.zeros_like(coc), torch.zeros_like(coc)
        else:
            splat_log_depth, splat_weight = self.splat_factor(prior_depth, prior_conf)
        depth, evidence = posterior_numba.decode_photo(coc, scale, side_logit, focus_distance, gain,
                                                       self.inverse_depths, self.log_prior, splat_log_depth, splat_weight)
        return depth, (side_logit + evidence).clamp(-LOGIT_CAP, LOGIT_CAP)


class DFDModel(nn.Module):
    """SDNet and DepthNet together: one image (and its lens) → CoC, its scale, side logit, depth."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sdnet = SDNet(cfg)
        self.depthnet = DepthNet(cfg)
        # The CoC gains [px·m] the nets were trained on: unbounded until training sets them.
        self.register_buffer("gain_range", torch.tensor([0.0, math.inf]))

    def set_gain_range(self, gains: torch.Tensor) -> None:
        """Keep the nets' gain input plane within the range of `gains` (px·m: every lens and focus
        distance of the training data). A gain the nets never saw makes a constant input plane
        off their training distribution, which shifts every CoC they read; blur is read in
        pixels, so the nets are shown the nearest gain they know and the decode uses the true one
        (docs/design.md §8, "Another camera")."""
        g = gains.flatten().double()
        self.gain_range.copy_(torch.stack([g.min(), g.max()]).to(self.gain_range))

    def forward(self, image: torch.Tensor, focus_distance: torch.Tensor, lens: optics.Lens,
                prior_depth: torch.Tensor | None = None, prior_conf: torch.Tensor | None = None,
                likelihood: bool = True) -> dict[str, torch.Tensor]:
        """images (N, 3, H, W) sRGB in [0, 1], focus distances (N,) [m] and the lens (fields of
        shape (N,) or floats) → maps (N, H, W): coc [px], coc_scale [px] (× `scale_calibration` in
        eval mode), side_logit, near_logit (the posterior's side, for the side loss; it reaches the
        side net only), depth [m], and with `likelihood` log_likelihood (N, K, H, W) (for lens
        fusion and the posterior NLL; the depth itself never forms it on CPU)."""
        gain = lens.gain_px(focus_distance)
        seen = gain.clamp(self.gain_range[0], self.gain_range[1])  # the nets' inputs; the decode uses `gain`
        coc, scale = self.sdnet(image, focus_distance, seen)
        side = self.depthnet.side_logit(coc, scale, image, focus_distance, seen)
        if not self.training:  # the side net reads the maps it was trained with; the decode, the calibrated ones
            scale = scale * self.cfg.scale_calibration
            coc = share_coc(coc, scale, image, self.cfg.context_sigma_px, self.cfg.context_colour_sigma,
                            self.cfg.context_strength)
        coc_lik = self.depthnet.coc_log_likelihood(coc, scale, focus_distance, gain) if likelihood else None
        depth, near = self.depthnet.decode_photo(coc, scale, side, focus_distance, gain, prior_depth, prior_conf,
                                                 coc_log_likelihood=coc_lik)
        out = {"coc": coc, "coc_scale": scale, "side_logit": side, "near_logit": near, "depth": depth}
        if likelihood:
            out["log_likelihood"] = coc_lik + self.depthnet.side_log_likelihood(side, focus_distance)
        return out

    def fuse(self, log_likelihood: torch.Tensor, prior_depth: torch.Tensor | None = None,
             prior_conf: torch.Tensor | None = None) -> torch.Tensor:
        """Photos of one scene, aligned: their log-likelihoods (S, K, H, W) → one depth (H, W) in metres:
        the depth that best explains every CoC map through the lens (`DepthNet.fused_log_likelihood`)."""
        return self.depthnet.decode(self.depthnet.fused_log_likelihood(log_likelihood), prior_depth, prior_conf)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
