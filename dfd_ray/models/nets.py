"""SDNet (image → CoC map) and DepthNet (CoC map → metric depth through the thin lens).

Lens encoding. The CoC of a point at depth d is c = G |1/d - 1/s| pixels with G = A v / p the
lens's CoC gain (A aperture, v image distance, p pixel pitch; DESIGN §2). Both networks see the
focus distance s and G as constant input planes (log-scaled), so one model can serve cameras
with other lenses and pitches.

DepthNet does not regress depth from scratch: the analytic inverse of the CoC gives two inverse
depths, 1/s ± c/G (behind or in front of the focus plane). DepthNet predicts which side (a soft
sign) and a small inverse-depth correction, and the result is kept inside the configured depth
range. Metric scale therefore comes from the optics, which is what lets a model trained on one
camera work on another. Given a stack's splat depth (stack inference), DepthNet refines it: a
per-pixel gate it predicts blends the splat's inverse depth with the lens estimate, starting
close to the splat (which beats single-image estimates from the first step); without a prior the
gate is exactly 0 and the single-image path is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    widths: tuple[int, ...] = (16, 32, 64)  # U-Net channels per level (SDNet)
    depth_widths: tuple[int, ...] = (16, 32)  # DepthNet U-Net channels per level
    min_depth: float = 0.1  # metres: predictions stay inside [min_depth, max_depth]
    max_depth: float = 3.0
    max_coc_px: float = 24.0  # CoC predictions saturate softly here (pixels)
    correction: float = 0.25  # max |inverse-depth correction| as a fraction of 1/min_depth


def coc_gain_px(focus_distance: torch.Tensor, focal_length: torch.Tensor, f_number: torch.Tensor,
                pixel_size: torch.Tensor) -> torch.Tensor:
    """G = A v / p in pixel·metres, so that c_px = G |1/d - 1/s|."""
    image_distance = focus_distance * focal_length / (focus_distance - focal_length)
    return (focal_length / f_number) * image_distance / pixel_size


def lens_planes(focus_distance: torch.Tensor, gain: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N,) focus distances [m] and CoC gains [px·m] → (N, 2, H, W) constant input planes."""
    feats = torch.stack([torch.log(focus_distance), torch.log(gain)], dim=1)
    return feats[:, :, None, None].expand(-1, -1, height, width)


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each pixel. Unlike GroupNorm it pools no statistics across
    pixels, so an output depends only on its receptive field: a 48-px training crop, a tile and a
    whole photo see the same network."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer_norm over the last dim of a channels-last view: 4x faster on CPU than mean/var
        # reductions across the strided channel dim (measured at 16x256x256).
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class _Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1), ChannelNorm(c_out), nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1), ChannelNorm(c_out), nn.SiLU(),
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** (len(self.down) - 1)
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x)[..., :h, :w]


class SDNet(nn.Module):
    """One defocused image (N, 3, H, W) in [0, 1] + lens → CoC map (N, H, W) in pixels, >= 0."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = UNet(5, 1, cfg.widths)

    def forward(self, image: torch.Tensor, focus_distance: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image * 2 - 1, lens_planes(focus_distance, gain, *image.shape[-2:])], dim=1)
        raw = self.net(x)[:, 0]
        return self.cfg.max_coc_px * torch.tanh(F.softplus(raw) / self.cfg.max_coc_px)


class DepthNet(nn.Module):
    """CoC map + image + lens (+ optional splat prior) → metric depth (N, H, W) in metres."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # coc (log1p), image (3), lens (2), prior inverse depth (normalised) and its confidence
        # outputs: side (soft sign), inverse-depth correction, trust in the prior (gate logit)
        self.net = UNet(8, 3, cfg.depth_widths)
        with torch.no_grad():  # the gate starts uniform (sigmoid(2) ≈ 0.88), not at random per pixel
            self.net.head.weight[2].zero_()
            self.net.head.bias[2].zero_()

    def forward(self, coc: torch.Tensor, image: torch.Tensor, focus_distance: torch.Tensor, gain: torch.Tensor,
                prior_depth: torch.Tensor | None = None, prior_conf: torch.Tensor | None = None) -> torch.Tensor:
        n, h, w = coc.shape
        u_lo, u_hi = 1.0 / self.cfg.max_depth, 1.0 / self.cfg.min_depth
        if prior_depth is None:
            prior_u = torch.zeros_like(coc)
            prior_conf = torch.zeros_like(coc)
        else:
            prior_u = (1.0 / prior_depth.clamp_min(1e-3) - u_lo) / (u_hi - u_lo)
            prior_conf = prior_conf if prior_conf is not None else torch.ones_like(coc)
        x = torch.cat([torch.log1p(coc)[:, None], image * 2 - 1, lens_planes(focus_distance, gain, h, w),
                       (prior_u * prior_conf)[:, None], prior_conf[:, None]], dim=1)
        side, correction, trust = self.net(x).unbind(1)
        s = focus_distance[:, None, None]
        g = gain[:, None, None]
        # Analytic inverse of the thin lens: u = 1/s + sign · c / G, the sign from the network.
        u = 1.0 / s + torch.tanh(side) * coc / g + self.cfg.correction * u_hi * torch.tanh(correction)
        if prior_depth is not None:
            # Where a prior is given (confidence > 0; prior dropout zeroes it), blend towards it. The
            # +2 bias starts the gate at ~0.88: trust the fit until training says otherwise.
            gate = torch.sigmoid(trust + 2.0) * (prior_conf > 0).to(u.dtype)
            u = gate / prior_depth.clamp_min(1e-3) + (1 - gate) * u
        # Stay inside the range smoothly, so that gradients never vanish at a hard clamp.
        u = u_lo + (u_hi - u_lo) * torch.sigmoid(_logit_range(u, u_lo, u_hi))
        return 1.0 / u


def _logit_range(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Inverse of lo + (hi - lo) · sigmoid(·) inside the range, extended linearly outside it."""
    t = ((u - lo) / (hi - lo)).clamp(1e-4, 1 - 1e-4)
    inside = torch.log(t) - torch.log1p(-t)
    overshoot = (u - lo) / (hi - lo) - t  # 0 inside the range
    return inside + overshoot * 4.0


class DFDModel(nn.Module):
    """SDNet and DepthNet together: one image (and its lens) → (CoC px, depth m)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sdnet = SDNet(cfg)
        self.depthnet = DepthNet(cfg)

    def forward(self, image: torch.Tensor, focus_distance: torch.Tensor, focal_length: torch.Tensor,
                f_number: torch.Tensor, pixel_size: torch.Tensor, prior_depth: torch.Tensor | None = None,
                prior_conf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        gain = coc_gain_px(focus_distance, focal_length, f_number, pixel_size)
        coc = self.sdnet(image, focus_distance, gain)
        depth = self.depthnet(coc, image, focus_distance, gain, prior_depth, prior_conf)
        return coc, depth


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

