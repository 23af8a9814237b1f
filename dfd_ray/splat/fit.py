"""Per-scene fit: Gaussians on the pixel grid whose renders match every slice of a focal stack.

Each Gaussian sits on the ray through the centre of its block×block pixel cell; the fit moves it
along that ray (inverse depth, bounded to the configured range) and adjusts its colour, size and
opacity so that the thin-lens render at each slice's focus distance matches that slice (L1 +
SSIM, in linear light). No GT depth or AIF is read: the depth comes from how the blur of each
Gaussian must change across the stack. The fit starts from classical depth from focus.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dfd_ray import imaging
from dfd_ray.config import require, require_choice
from dfd_ray.depth_from_focus import depth_from_focus
from dfd_ray.focalstack import FocalStack
from dfd_ray.splat.render import render
from dfd_ray.splat.scene import Camera, SceneSplats, save_splats


@dataclass
class FitConfig:
    steps: int = 120  # Adam steps; each renders `slices_per_step` slices of the stack
    slices_per_step: int = 2  # slices rendered per step, drawn at random; 0 = all (2 of 5: as
    # accurate as all 5 and 2.7x faster, docs/benchmarks.md)
    warmup_steps: int = 30  # first steps fit colour and shape only, depth held at its start
    block: int = 1  # one Gaussian per block×block pixels
    init: str = "dff"  # initial depth: "dff" (depth from focus) or "middle" of the range
    min_depth: float | None = None  # metres; None: half the nearest focus distance
    max_depth: float | None = None  # metres; None: twice the farthest focus distance
    lr_depth: float = 0.005  # on the depth logit; larger steps chase colour errors
    lr_color: float = 0.02  # Adam's rate on the colours (linear light)
    lr_shape: float = 0.02  # log scale and opacity logit
    ssim_weight: float = 0.2  # loss = (1 - w) L1 + w (1 - SSIM)
    smooth_weight: float = 0.1  # edge-aware smoothness of inverse depth between neighbour cells
    eps2d: float = 0.1  # pixels²: screen-space dilation of every splat (gsplat's default is 0.3;
    # less lets per-pixel colours explain the sharpest slice, measured to halve the depth bias)
    device: str = "cpu"  # torch device of the fit: "cpu" (torch compositor) or "cuda" (gsplat)
    seed: int = 0  # torch seed of the fit
    log_every: int = 20  # steps between progress lines (step, loss) while a scene fits; 0 = silent

    def __post_init__(self) -> None:
        require(self.steps >= 0, "steps", "must be >= 0")
        require(self.block >= 1, "block", "must be >= 1 pixel")
        require(self.slices_per_step >= 0, "slices_per_step", "must be >= 0 (0 = every slice)")
        require_choice("init", self.init, ["dff", "middle"])
        require(0.0 <= self.ssim_weight <= 1.0, "ssim_weight", "must lie in [0, 1]")
        require(self.log_every >= 0, "log_every", "must be >= 0 steps")

    def depth_range(self, focus_distances: np.ndarray) -> tuple[float, float]:
        lo = self.min_depth if self.min_depth is not None else 0.5 * float(np.min(focus_distances))
        hi = self.max_depth if self.max_depth is not None else 2.0 * float(np.max(focus_distances))
        return lo, hi


@dataclass
class FitResult:
    splats: SceneSplats
    aif: np.ndarray  # (H, W, 3) sRGB in [0, 1]: the pinhole render
    depth: np.ndarray  # (H, W) metres: the pinhole render's expected depth
    confidence: np.ndarray  # (H, W) in [0, 1]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def save_fit(result: FitResult, uri: str) -> None:
    """Persist a fit: its splats with the depth, confidence and AIF maps beside them."""
    save_splats(result.splats, uri, extra={"depth": result.depth, "confidence": result.confidence, "aif": result.aif})


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM of image batches (B, H, W, C) in [0, 1], Gaussian window σ = 1.5 pixels."""
    x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
    c = x.shape[1]
    t = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    g = torch.exp(-(t**2) / (2 * 1.5**2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(img, [window // 2] * 4, mode="replicate"), kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()


def _grid_rays(camera: Camera, block: int, device: str) -> tuple[torch.Tensor, int, int]:
    """Unit-depth rays through the centres of the block cells: (N, 3), rows, cols."""
    rows, cols = math.ceil(camera.height / block), math.ceil(camera.width / block)
    v = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) * block
    u = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) * block
    v = v.clamp_max(camera.height - 0.5)
    u = u.clamp_max(camera.width - 0.5)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    rays = torch.stack([(uu - camera.cx) / camera.fx, (vv - camera.cy) / camera.fy, torch.ones_like(uu)], -1)
    return rays.reshape(-1, 3), rows, cols


def _block_mean(image: np.ndarray, block: int, rows: int, cols: int) -> np.ndarray:
    """Average (H, W, ...) over block×block cells (edge cells partial) → (rows·cols, ...)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    t = t.reshape(*t.shape[:2], -1).permute(2, 0, 1)[None]
    pooled = F.adaptive_avg_pool2d(t, (rows, cols)) if block > 1 else t
    return pooled[0].permute(1, 2, 0).reshape(rows * cols, -1).numpy()


class _Params(torch.nn.Module):
    """The optimised quantities; `splats()` turns them into renderable Gaussians."""

    def __init__(self, camera: Camera, rays: torch.Tensor, inv_init: np.ndarray, colors: np.ndarray,
                 inv_range: tuple[float, float], block: int) -> None:
        super().__init__()
        self.camera, self.inv_lo, self.inv_hi = camera, inv_range[0], inv_range[1]
        self.register_buffer("rays", rays)
        frac = np.clip((inv_init - self.inv_lo) / (self.inv_hi - self.inv_lo), 1e-3, 1 - 1e-3)
        device = rays.device
        self.depth_logit = torch.nn.Parameter(torch.logit(torch.as_tensor(frac, dtype=torch.float32, device=device)).reshape(-1))
        self.colors = torch.nn.Parameter(torch.as_tensor(colors, dtype=torch.float32, device=device))
        n = rays.shape[0]
        # A Gaussian of σ = half a cell covers its cell with neighbours overlapping smoothly.
        self.log_scale_px = torch.nn.Parameter(torch.full((n,), math.log(0.5 * block), device=device))
        self.opacity_logit = torch.nn.Parameter(torch.full((n,), 4.0, device=device))

    def depths(self) -> torch.Tensor:
        inv = self.inv_lo + (self.inv_hi - self.inv_lo) * torch.sigmoid(self.depth_logit)
        return 1.0 / inv

    def smoothness(self, rows: int, cols: int) -> torch.Tensor:
        """Mean |Δ inverse depth| (normalised to the range) between neighbouring cells, weighted
        down across colour edges, where depth may jump."""
        frac = torch.sigmoid(self.depth_logit).reshape(rows, cols)
        colour = self.colors.detach().reshape(rows, cols, -1)
        total = frac.new_zeros(())
        for dim in (0, 1):
            jump = torch.diff(frac, dim=dim).abs()
            edge = torch.diff(colour, dim=dim).abs().sum(-1)
            total = total + (jump * torch.exp(-edge / 0.05)).mean()
        return total

    def splats(self) -> SceneSplats:
        z = self.depths()
        scale = torch.exp(self.log_scale_px) * z / self.camera.fx  # metres: σ_px pixels at depth z
        n = z.shape[0]
        quats = torch.zeros(n, 4, device=z.device)
        quats[:, 0] = 1.0
        return SceneSplats(
            means=self.rays * z[:, None],
            log_scales=torch.log(scale)[:, None].expand(n, 3),
            quats=quats,
            opacity_logits=self.opacity_logit,
            colors=self.colors,
            camera=self.camera,
        )


def _confidence(aif: np.ndarray, residual: np.ndarray, window: int = 7) -> np.ndarray:
    """Where the fit can know depth: textured (blur is visible) and well explained (low residual)."""
    grey = torch.from_numpy(aif.mean(-1, dtype=np.float32))[None, None]
    gx = grey[..., :, 1:] - grey[..., :, :-1]
    gy = grey[..., 1:, :] - grey[..., :-1, :]
    energy = F.pad(gx**2, (0, 1, 0, 0)) + F.pad(gy**2, (0, 0, 0, 1))
    pad = window // 2
    texture = F.avg_pool2d(F.pad(energy, [pad] * 4, mode="replicate"), window, stride=1)[0, 0].numpy()
    res = F.avg_pool2d(F.pad(torch.from_numpy(residual)[None, None], [pad] * 4, mode="replicate"), window, stride=1)[0, 0].numpy()
    texture_term = texture / (texture + 1e-3)
    residual_term = np.exp(-res / 0.02)
    return (texture_term * residual_term).astype(np.float32)


def fit_scene(stack: FocalStack, cfg: FitConfig | None = None, log: Callable[[str], None] | None = None) -> FitResult:
    """Fit Gaussians to every slice of `stack`; returns splats, AIF, depth and confidence.

    `log` gets a progress line every `cfg.log_every` steps and at the last step."""
    cfg = cfg or FitConfig()
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    camera = Camera.from_stack(stack)
    images = stack.images_float()  # sRGB (S, H, W, 3)
    targets = torch.from_numpy(imaging.srgb_to_linear(images)).to(cfg.device)
    distances = torch.as_tensor(stack.focus_distances, dtype=torch.float32, device=cfg.device)
    lo, hi = cfg.depth_range(stack.focus_distances)
    if not 0 < lo < hi or lo <= stack.focal_length:
        raise ValueError(f"scene {stack.scene_id}: depth range {lo}..{hi} m is not valid for this lens")

    rays, rows, cols = _grid_rays(camera, cfg.block, cfg.device)
    if cfg.init == "dff":
        init_depth, _ = depth_from_focus(images, stack.focus_distances)
        inv_init = 1.0 / _block_mean(np.clip(init_depth, lo, hi)[..., None], cfg.block, rows, cols)[:, 0]
    else:
        inv_init = np.full(rows * cols, 0.5 * (1 / lo + 1 / hi), np.float32)
    colors = _block_mean(imaging.srgb_to_linear(images.mean(0)), cfg.block, rows, cols)
    params = _Params(camera, rays, inv_init, colors, (1 / hi, 1 / lo), cfg.block).to(cfg.device)
    optimiser = torch.optim.Adam([
        {"params": [params.depth_logit], "lr": cfg.lr_depth},
        {"params": [params.colors], "lr": cfg.lr_color},
        {"params": [params.log_scale_px, params.opacity_logit], "lr": cfg.lr_shape},
    ])
    losses = []
    all_slices = torch.arange(len(stack.focus_distances))
    draw = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.steps):
        # Until the colours explain the slices, the depth gradient mostly chases colour errors.
        params.depth_logit.requires_grad_(step >= cfg.warmup_steps)
        chosen = all_slices
        if 0 < cfg.slices_per_step < len(all_slices):
            chosen = torch.randperm(len(all_slices), generator=draw)[:cfg.slices_per_step].sort().values
        out = render(params.splats(), focus_distance=distances[chosen], eps2d=cfg.eps2d)
        target = targets[chosen]
        l1 = (out.image - target).abs().mean()
        loss = (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * (1 - ssim(out.image.clamp(0, 1), target))
        if cfg.smooth_weight > 0:
            loss = loss + cfg.smooth_weight * params.smoothness(rows, cols)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if log is not None and cfg.log_every and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            log(f"fit {stack.scene_id}: step {step + 1}/{cfg.steps} loss {losses[-1]:.4f} "
                f"({time.perf_counter() - start:.1f} s)")

    with torch.no_grad():
        splats = params.splats().detach()
        pinhole = render(splats, eps2d=cfg.eps2d)
        slices = render(splats, focus_distance=distances, eps2d=cfg.eps2d)
        residual = (slices.image - targets).abs().mean((0, 3)).cpu().numpy()
    aif = imaging.linear_to_srgb(pinhole.image.clamp(0, 1).cpu().numpy())
    depth = pinhole.depth.cpu().numpy().astype(np.float32)
    return FitResult(splats, aif, depth, _confidence(aif, residual), losses, time.perf_counter() - start)
