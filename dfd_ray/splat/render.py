"""The renderer's front door: one `render` call, backends chosen by tensor device.

    render(splats, focus_distance=s)   thin-lens defocus at focus distance s (metres)
    render(splats, coc_map=c)          each Gaussian blurred by the CoC map (pixels) at its centre
    render(splats)                     pinhole (everything sharp)

Backends mirror each other: projection and defocus are shared PyTorch (`project.py`); the
compositing is `composite_numba` (CPU: tiles compiled with numba, the default there),
`composite_gsplat` (CUDA: gsplat's tile rasterizer, the default there) or `composite_torch`
(plain PyTorch on any device: the reference the other two are tested against).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dfd_ray.splat import composite_numba, composite_torch
from dfd_ray.splat.project import EPS2D, project
from dfd_ray.splat.scene import SceneSplats

BACKENDS = ("auto", "torch", "numba", "gsplat")


@dataclass
class RenderOutput:
    """One image: (H, W, ...); several focus distances or CoC maps: (B, H, W, ...)."""

    image: torch.Tensor  # (..., H, W, 3) linear RGB
    depth: torch.Tensor  # (..., H, W) expected depth of the composited splats, metres
    alpha: torch.Tensor  # (..., H, W) accumulated opacity


def choose_backend(device: torch.device, backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; valid choices: {list(BACKENDS)}")
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError(f"the gsplat backend needs CUDA tensors, got tensors on {device}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"the numba backend needs CPU tensors, got tensors on {device}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "numba" if device.type == "cpu" else "torch"
    return backend


def render(
    splats: SceneSplats,
    focus_distance: torch.Tensor | float | None = None,
    aperture: torch.Tensor | float | None = None,
    coc_map: torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    backend: str = "auto",
    eps2d: float = EPS2D,
) -> RenderOutput:
    """Render the splats through their camera; differentiable in every input tensor.

    A 1-D `focus_distance` or a (B, H, W) `coc_map` renders B images in one pass.
    """
    cam = splats.camera
    proj = project(splats, focus_distance=focus_distance, aperture=aperture, coc_map=coc_map, eps2d=eps2d)
    chosen = choose_backend(splats.means.device, backend)
    if chosen == "gsplat":
        from dfd_ray.splat import composite_gsplat

        image, depth, alpha = composite_gsplat.composite(proj, splats.colors, cam.width, cam.height)
    elif chosen == "numba":
        image, depth, alpha = composite_numba.composite(proj, splats.colors, cam.width, cam.height)
    else:
        image, depth, alpha = composite_torch.composite(proj, splats.colors, cam.width, cam.height)
    if background is not None:
        image = image + (1 - alpha)[..., None] * background
    batched = (coc_map is not None and coc_map.dim() == 3) or (
        focus_distance is not None and torch.as_tensor(focus_distance).dim() == 1
    )
    if not batched:
        image, depth, alpha = image[0], depth[0], alpha[0]
    return RenderOutput(image, depth, alpha)
