"""Gaussian splats with thin-lens defocus: scene, projection, compositing backends, fitting."""

from dfd_ray.splat.render import RenderOutput, render
from dfd_ray.splat.scene import Camera, SceneSplats, load_splats, save_splats

__all__ = ["Camera", "RenderOutput", "SceneSplats", "load_splats", "render", "save_splats"]
