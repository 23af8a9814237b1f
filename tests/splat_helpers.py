"""Splat scenes shared by the renderer, renderer-service and gsplat-parity tests."""

import torch

from dfd_ray.splat import Camera, SceneSplats

CAM = Camera(width=24, height=20, focal_length=2.9e-3, f_number=1.0, pixel_size=3.1e-3 / 256)


def random_splats(n: int, seed: int, cam: Camera = CAM, dtype=torch.float64) -> SceneSplats:
    g = torch.Generator().manual_seed(seed)
    z = 0.15 + 0.6 * torch.rand(n, generator=g, dtype=dtype)
    u = torch.rand(n, generator=g, dtype=dtype) * (cam.width + 8) - 4
    v = torch.rand(n, generator=g, dtype=dtype) * (cam.height + 8) - 4
    means = torch.stack([(u - cam.cx) * z / cam.fx, (v - cam.cy) * z / cam.fy, z], -1)
    log_scales = torch.log(z[:, None] / cam.fx * (0.3 + 2.5 * torch.rand(n, 3, generator=g, dtype=dtype)))
    return SceneSplats(
        means=means,
        log_scales=log_scales,
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        opacity_logits=torch.randn(n, generator=g, dtype=dtype) * 2,
        colors=torch.rand(n, 3, generator=g, dtype=dtype),
        camera=cam,
    )
