"""CUDA compositing through gsplat 1.5.3's tile rasterizer; mirrors `composite_torch.composite`.

Only the compositing runs in gsplat: projection and defocus are the shared PyTorch code in
`project.py`, so both backends composite the very same 2D Gaussians. gsplat's kernel applies the
same per-pixel rules as the torch backend (pixel centres +0.5, alpha = min(0.999, o e^-q),
skip alpha < 1/255, stop before transmittance <= 1e-4); depth rides along as a fourth channel.
gsplat compiles its CUDA kernels on first use and never runs on CPU tensors (docs/design.md §3, §5).
"""

from __future__ import annotations

import math

import torch

from dfd_ray.splat.project import Projected

TILE_SIZE = 16


def composite(
    proj: Projected, colors: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render B images on CUDA: (image (B, H, W, C), depth (B, H, W) metres, alpha (B, H, W))."""
    if not proj.means2d.is_cuda:
        raise ValueError("composite_gsplat needs CUDA tensors; use composite_torch on CPU")
    from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels

    dtype = proj.means2d.dtype
    n_img = proj.opacities.shape[0]
    # gsplat's kernels are float32; the B images are its leading "camera" dimension.
    means2d = proj.means2d.float().contiguous()
    conics = proj.conics.float().contiguous()
    opacities = proj.opacities.float().contiguous()
    depths = proj.depths.float().contiguous()
    # A Gaussian below the alpha threshold everywhere is culled, as in gsplat's projection.
    radii = torch.where((proj.opacities >= 1 / 255)[..., None], proj.radii, 0).to(torch.int32).contiguous()
    payload = torch.cat([colors.float()[None].expand(n_img, -1, -1), depths[..., None]], dim=-1).contiguous()
    tile_w, tile_h = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE_SIZE, tile_w, tile_h)
    offsets = isect_offset_encode(isect_ids, n_img, tile_w, tile_h)
    rendered, alphas = rasterize_to_pixels(
        means2d, conics, payload, opacities, width, height, TILE_SIZE, offsets, flatten_ids
    )
    rendered, alpha = rendered.to(dtype), alphas[..., 0].to(dtype)
    depth = rendered[..., -1] / alpha.clamp_min(1e-10)
    return rendered[..., :-1], depth, alpha
