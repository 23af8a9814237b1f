"""Benchmark: splat rendering (forward, backward, pairs/s) and per-scene fit time.

    python jobs/bench_render.py [--quick] [--no-fit] [--counts 16384,100000] [--sizes 128,256]

Scenes: N Gaussians spread over the image at 0.1-0.6 m, sized so that together they cover it
about once (a fitted scene's density), rendered with the fod500 lens focused at 0.3 m, so every
splat carries its defocus blur. On CPU the numba backend is timed beside the torch one (the
reference), on CUDA gsplat beside torch.
Prints one table; figures are medians over repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import numpy as np
import torch

from dfd_ray import optics, synth
from dfd_ray.config import load_config
from dfd_ray.splat import Camera, SceneSplats, render
from dfd_ray.splat.composite_torch import ALPHA_THRESHOLD, _pairs
from dfd_ray.splat.fit import FitConfig, fit_scene
from dfd_ray.splat.project import project

FOD = optics.get_preset("fod500")


def scene(n: int, size: int, device: str) -> SceneSplats:
    cam = Camera.from_lens(FOD.lens, size, size)
    g = torch.Generator().manual_seed(0)
    z = 0.1 + 0.5 * torch.rand(n, generator=g)
    u, v = torch.rand(n, generator=g) * size, torch.rand(n, generator=g) * size
    means = torch.stack([(u - cam.cx) * z / cam.fx, (v - cam.cy) * z / cam.fy, z], -1)
    footprint_px = size / math.sqrt(n)
    log_scales = torch.log(z[:, None] / cam.fx * footprint_px * 0.6 * (0.5 + torch.rand(n, 3, generator=g)))
    splats = SceneSplats(means, log_scales, torch.randn(n, 4, generator=g), torch.randn(n, generator=g) + 2,
                         torch.rand(n, 3, generator=g), cam)
    return splats.to(device).requires_grad_()


def listed_pairs(splats: SceneSplats) -> int:
    """(pixel, Gaussian) pairs the compositor lists (inside each splat's alpha = 1/255 ellipse): the work it scans."""
    with torch.no_grad():
        proj = project(splats, focus_distance=0.3)
        gid, pix, _, _ = _pairs(proj, splats.camera.width, splats.camera.height)
        return int(len(gid))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_render(splats: SceneSplats, backend: str, device: str, repeats: int) -> tuple[float, float]:
    fwd, bwd = [], []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        out = render(splats, focus_distance=0.3, backend=backend)
        sync(device)
        t1 = time.perf_counter()
        (out.image.sum() + out.depth.sum()).backward()
        sync(device)
        t2 = time.perf_counter()
        if i:  # the first run warms up (and on CUDA compiles gsplat's kernels)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd), statistics.median(bwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--no-fit", action="store_true", help="skip the fit timings")
    parser.add_argument("--counts", default="", help="comma-separated Gaussian counts (default: the standard set)")
    parser.add_argument("--sizes", default="", help="comma-separated image sizes in pixels (default: the standard set)")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"host: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"cuda: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"{'device':6} {'backend':7} {'gaussians':>9} {'image':>7} {'fwd ms':>8} {'bwd ms':>8} "
          f"{'pairs':>10} {'Mpairs/s fwd':>12}")
    counts = [2_000, 20_000] if args.quick else [2_000, 16_384, 20_000, 100_000]
    sizes = [64, 128] if args.quick else [64, 128, 256]
    counts = [int(c) for c in args.counts.split(",")] if args.counts else counts
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sizes
    for device in devices:
        backends = ["torch", "numba"] if device == "cpu" else ["torch", "gsplat"]
        for n in counts:
            for size in sizes:
                splats = scene(n, size, device)
                pairs = listed_pairs(splats)
                for backend in backends:
                    fwd, bwd = time_render(splats, backend, device, repeats)
                    print(f"{device:6} {backend:7} {n:9d} {size:4d}²  {fwd * 1e3:8.1f} {bwd * 1e3:8.1f} "
                          f"{pairs:10d} {pairs / fwd / 1e6:12.1f}", flush=True)
    if args.no_fit:
        return
    for size in (64, 128):
        cfg = load_config(synth.SynthConfig, ["out=unused", f"height={size}", f"width={size}"])
        stack = synth.make_scene(cfg, 0, "test")
        result = fit_scene(stack, FitConfig())
        gt = stack.depth
        print(f"fit 5x{size}x{size} ({FitConfig().steps} steps, {size * size} Gaussians, cpu): "
              f"{result.seconds:.1f} s, depth abs_rel {np.mean(np.abs(result.depth - gt) / gt):.3f}", flush=True)


if __name__ == "__main__":
    main()
