"""Projection of 3D Gaussians to 2D, with thin-lens defocus (docs/design.md §3). Plain PyTorch, any device.

Both compositor backends take the output of `project`; only the compositing differs between
them. The perspective Jacobian clamps x/z and y/z just outside the field of view the way gsplat
does, so that the two backends see identical 2D Gaussians.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dfd_ray import optics
from dfd_ray.splat.scene import Camera, SceneSplats

ALPHA_THRESHOLD = 1.0 / 255.0  # a Gaussian below this alpha at a pixel is skipped there
EPS2D = 0.3  # pixels²: gsplat's screen-space dilation, keeps every splat at least a pixel wide
NEAR_PLANE = 0.01  # metres


@dataclass
class Projected:
    """B images' worth of 2D Gaussians in pixel coordinates (one row per image).

    Gaussians behind the near plane have opacity 0. All fields have leading dims (B, N).
    """

    means2d: torch.Tensor  # (B, N, 2) pixels, pixel centres at +0.5
    conics: torch.Tensor  # (B, N, 3) upper triangle (a, b, c) of the inverse 2D covariance
    opacities: torch.Tensor  # (B, N) after the defocus energy compensation
    depths: torch.Tensor  # (B, N) camera z, metres
    radii: torch.Tensor  # (B, N, 2) int: half-widths of the box that holds alpha >= 1/255


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*quats.shape[:-1], 3, 3)


def covariance_3d(quats: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) covariance R S S R^T in metres². Products of 3x3 matrices are written entry by
    entry, not as batched matmuls: at 16k Gaussians torch's bmm on 3x3 blocks cost a quarter of
    a render's projection (docs/benchmarks.md, "Projection without batched matmuls")."""
    r0, r1, r2 = (quat_to_rotmat(quats) * torch.exp(log_scales)[..., None, :]).unbind(-2)  # rows of R S
    s00, s01, s02 = (r0 * r0).sum(-1), (r0 * r1).sum(-1), (r0 * r2).sum(-1)
    s11, s12, s22 = (r1 * r1).sum(-1), (r1 * r2).sum(-1), (r2 * r2).sum(-1)
    return torch.stack([s00, s01, s02, s01, s11, s12, s02, s12, s22], -1).reshape(*quats.shape[:-1], 3, 3)


def perspective_2d(means: torch.Tensor, cov3d: torch.Tensor,
                   camera: Camera) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA projection: means2d (N, 2) pixels and the 2D covariance's entries xx, xy, yy (N,)
    pixels², without dilation."""
    x, y, z = means.unbind(-1)
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    # Clamp limits from the whole sensor (gsplat uses the rendered image's; for an uncropped
    # camera they are the same), so that a window renders exactly as its part of the full image.
    sensor_cx, sensor_cy = cx + camera.origin_x, cy + camera.origin_y
    tan_fovx, tan_fovy = 0.5 * camera.sensor_width / fx, 0.5 * camera.sensor_height / fy
    lim_x_pos = (camera.sensor_width - sensor_cx) / fx + 0.3 * tan_fovx
    lim_x_neg = sensor_cx / fx + 0.3 * tan_fovx
    lim_y_pos = (camera.sensor_height - sensor_cy) / fy + 0.3 * tan_fovy
    lim_y_neg = sensor_cy / fy + 0.3 * tan_fovy
    tx = z * torch.clamp(x / z, -lim_x_neg, lim_x_pos)
    ty = z * torch.clamp(y / z, -lim_y_neg, lim_y_pos)
    # J Σ J^T with the Jacobian J = [[j00, 0, j02], [0, j11, j12]], entry by entry.
    j00, j02 = fx / z, -fx * tx / z**2
    j11, j12 = fy / z, -fy * ty / z**2
    s00, s01, s02 = cov3d[..., 0, 0], cov3d[..., 0, 1], cov3d[..., 0, 2]
    s11, s12, s22 = cov3d[..., 1, 1], cov3d[..., 1, 2], cov3d[..., 2, 2]
    cov_xx = j00 * j00 * s00 + 2 * j00 * j02 * s02 + j02 * j02 * s22
    cov_xy = j00 * j11 * s01 + j00 * j12 * s02 + j02 * j11 * s12 + j02 * j12 * s22
    cov_yy = j11 * j11 * s11 + 2 * j11 * j12 * s12 + j12 * j12 * s22
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    return means2d, cov_xx, cov_xy, cov_yy


def thin_lens_coc_px(
    depths: torch.Tensor, focus_distance: torch.Tensor | float, aperture: torch.Tensor | float, camera: Camera
) -> torch.Tensor:
    """Signed CoC diameter in pixels: A v / p (1/s - 1/z) with v = s f / (s - f) (docs/design.md §2).

    Differentiable in focus distance and aperture diameter (metres); aperture 0 is a pinhole.
    """
    gain_px = optics.gain_px_of_aperture(focus_distance, camera.focal_length, aperture, camera.pixel_size)
    return gain_px * (1.0 / focus_distance - 1.0 / depths)


def sample_coc_map(coc_map: torch.Tensor, means2d: torch.Tensor) -> torch.Tensor:
    """CoC (pixels) of per-pixel maps (B, H, W) at each projected centre (N, 2): (B, N).

    Bilinear, clamped at the border, pixel centres at +0.5 (grid_sample with align_corners=False).
    """
    b, h, w = coc_map.shape
    grid = torch.stack([means2d[:, 0] / w * 2 - 1, means2d[:, 1] / h * 2 - 1], dim=-1).to(coc_map.dtype)
    sampled = torch.nn.functional.grid_sample(
        coc_map[:, None], grid[None, None].expand(b, 1, -1, -1), mode="bilinear",
        padding_mode="border", align_corners=False,
    )
    return sampled.reshape(b, -1)


def _as_batch(value: torch.Tensor | float | list, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, 1)


def project(
    splats: SceneSplats,
    focus_distance: torch.Tensor | float | list[float] | None = None,
    aperture: torch.Tensor | float | None = None,
    coc_map: torch.Tensor | None = None,
    eps2d: float = EPS2D,
) -> Projected:
    """Project the splats once per image, blurring each Gaussian by its CoC (docs/design.md §3).

    The CoC comes from the thin lens at `focus_distance` (metres; a scalar or one per image;
    `aperture` diameter in metres, default the camera's f / N), or from `coc_map` ((H, W) or
    (B, H, W), pixels) sampled at each projected centre. Neither: one pinhole image. A uniform
    disc of diameter c has per-axis variance c²/16, added to the 2D covariance; the opacity is
    scaled by sqrt(det Σ / det(Σ + σ² I)) so that the splat's energy stays the same as it spreads.
    """
    camera = splats.camera
    cov3d = covariance_3d(splats.quats, splats.log_scales)
    means2d, cov_xx, cov_xy, cov_yy = perspective_2d(splats.means, cov3d, camera)
    depths = splats.means[:, 2]
    cov_xx, cov_xy, cov_yy = (cov_xx + eps2d)[None], cov_xy[None], (cov_yy + eps2d)[None]  # (1, N) each
    opacities = torch.sigmoid(splats.opacity_logits)[None]
    if coc_map is not None:
        if focus_distance is not None:
            raise ValueError("give either focus_distance or coc_map, not both")
        maps = coc_map if coc_map.dim() == 3 else coc_map[None]
        if maps.dim() != 3 or maps.shape[1:] != (camera.height, camera.width):
            raise ValueError(
                f"coc_map must be {camera.height}x{camera.width} pixels (or B x that), got {tuple(coc_map.shape)}"
            )
        coc = sample_coc_map(maps, means2d)
    elif focus_distance is not None:
        s = _as_batch(focus_distance, depths)
        a = camera.aperture if aperture is None else aperture
        coc = thin_lens_coc_px(depths[None], s, a, camera)
    else:
        coc = None
    det = cov_xx * cov_yy - cov_xy * cov_xy
    if coc is not None:
        var = coc**2 / 16.0
        cov_xx, cov_yy = cov_xx + var, cov_yy + var
        blurred_det = cov_xx * cov_yy - cov_xy * cov_xy
        opacities = opacities * torch.sqrt(det / blurred_det)
        det = blurred_det
    n_img = det.shape[0]
    conics = torch.stack([cov_yy / det, -cov_xy / det, cov_xx / det], dim=-1)
    opacities = torch.where(depths >= NEAR_PLANE, opacities, torch.zeros_like(opacities))  # as gsplat: z == near kept
    with torch.no_grad():
        # Box half-widths of the ellipse where opacity * exp(-q/2) >= 1/255, axis by axis.
        extend = torch.sqrt(2 * torch.log((opacities / ALPHA_THRESHOLD).clamp_min(1.0)))
        radii = torch.ceil(extend[..., None] * torch.sqrt(torch.stack([cov_xx, cov_yy], -1)))
    return Projected(
        means2d.expand(n_img, -1, -1), conics, opacities.expand(n_img, -1), depths.expand(n_img, -1),
        radii.to(torch.int64),
    )
