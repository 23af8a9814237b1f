"""Synthetic focal stacks: textured planes and shapes at known depths, rendered through a thin lens.

A scene is a background plane (fronto-parallel or slanted) and a few shapes in front of it, each
a plane with its own texture. Depths are drawn uniform in inverse depth over the camera's range:
the CoC is linear in inverse depth (docs/design.md §2), so this spreads the surfaces evenly over the blur
sizes the camera can tell apart. Every foreground shape is drawn nearer than whatever it covers,
so the painter's order is the depth order and the GT depth is exact at occlusion edges.

The preset fixes the pixel pitch; `height`/`width` only change the field of view (docs/design.md §2).
Each scene has its own random stream (seed, index), so a dataset is deterministic for a seed
and scenes can be generated in any order or in parallel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from omegaconf import MISSING

from dfd_ray import defocus, imaging, optics, storage
from dfd_ray.config import require, require_choice, save_config
from dfd_ray.focalstack import FocalStack, stack_to_row, write_stacks


@dataclass
class SynthConfig:
    out: str = MISSING  # dataset root URI; train/ and test/ are written under it
    preset: str = "fod500"  # camera preset: lens, pitch, focus distances
    f_number: float | None = None  # None takes the preset's; another aperture is another camera (blur scales with 1/N)
    n_scenes: int = 16  # training stacks
    n_test: int = 4  # held-out stacks
    height: int = 128  # pixels (field of view at the preset's pitch)
    width: int = 128  # pixels
    seed: int = 0  # with (split, index), fixes every scene: a dataset is deterministic for a seed
    min_depth: float | None = None  # metres; None takes the preset's range
    max_depth: float | None = None  # metres; None takes the preset's range
    max_shapes: int = 4  # foreground shapes per scene (0..max_shapes)
    slant_probability: float = 0.5  # chance that a plane is slanted rather than fronto-parallel
    noise_std: float = 0.01  # sensor noise, in units of full scale at mid grey; 0 disables it
    bin_px: float = 0.25  # CoC step between the depth slabs of the renderer, pixels
    shard_size: int = 64  # stacks per Parquet shard

    def __post_init__(self) -> None:
        require_choice("preset", self.preset, sorted(optics.PRESETS))
        require(self.n_scenes >= 0 and self.n_test >= 0, "n_scenes", "counts must be >= 0")
        require(self.n_scenes + self.n_test > 0, "n_scenes", "n_scenes + n_test must be > 0")
        require(self.height >= 8 and self.width >= 8, "height", "images must be at least 8x8 pixels")
        require(self.max_shapes >= 0, "max_shapes", "must be >= 0")
        require(0.0 <= self.slant_probability <= 1.0, "slant_probability", "must lie in [0, 1]")
        require(self.noise_std >= 0.0, "noise_std", "must be >= 0")
        require(self.bin_px > 0.0, "bin_px", "must be > 0")
        require(self.f_number is None or self.f_number > 0, "f_number", f"must be > 0, got {self.f_number}")
        require(self.shard_size >= 1, "shard_size", "must be >= 1")
        lo, hi = self.depth_range()
        require(0 < lo < hi, "min_depth", f"need 0 < min_depth < max_depth, got {lo} and {hi}")
        focal = optics.PRESETS[self.preset].focal_length
        require(lo > focal, "min_depth", f"must exceed the focal length {focal} m")

    def depth_range(self) -> tuple[float, float]:
        preset = optics.PRESETS[self.preset]
        lo = self.min_depth if self.min_depth is not None else preset.min_depth
        hi = self.max_depth if self.max_depth is not None else preset.max_depth
        return lo, hi


# --- textures (sRGB, [0, 1]) ------------------------------------------------------------------

def _pink_noise(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-std noise with power spectrum ~ 1/f^beta (natural images: beta ≈ 2)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** (beta / 2)
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(h, w))
    return (field - field.mean()) / (field.std() + 1e-12)


def _palette(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Map t in [0, 1] through a random 3-colour gradient."""
    colours = rng.uniform(0.05, 0.95, size=(3, 3))
    t = np.clip(t, 0, 1)[..., None]
    lower = colours[0] + (colours[1] - colours[0]) * np.clip(2 * t, 0, 1)
    return np.where(t < 0.5, lower, colours[1] + (colours[2] - colours[1]) * np.clip(2 * t - 1, 0, 1))


def texture(rng: np.random.Generator, h: int, w: int, textured_everywhere: bool = False) -> np.ndarray:
    """A texture (H, W, 3) in [0, 1] with the statistics of natural surfaces.

    Kinds: coloured 1/f noise of a random spectral slope, warped stripes, flat-coloured cells
    (sharp edges, nothing between them) and smooth shading (almost no texture). Contrast and the
    amount of fine detail vary from none to strong. A net that only ever saw fine detail everywhere
    reads a smooth-but-sharp region as blur; here smoothness alone says nothing about the CoC, so it
    must learn to read edges and detail where they exist and to be unsure elsewhere
    (docs/design.md §8). `textured_everywhere` draws only full-contrast 1/f noise or stripes with
    fine detail, for checks that need blur to be readable at every pixel.
    """
    kind = rng.choice(2) if textured_everywhere else rng.choice(4, p=[0.35, 0.2, 0.25, 0.2])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == 0:
        t = 0.5 + 0.22 * _pink_noise(rng, h, w, rng.uniform(1.2, 2.8))
    elif kind == 1:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 16)  # pixels
        warp = 3.0 * _pink_noise(rng, h, w, 2.5)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period + warp
        t = 0.5 + 0.4 * np.sin(phase)
    elif kind == 2:
        n = int(rng.integers(6, 48))
        centres = rng.uniform(0, [h, w], size=(n, 2))
        d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
        t = rng.uniform(0, 1, n)[d.argmin(-1)]
    else:
        t = 0.5 + 0.2 * _pink_noise(rng, h, w, rng.uniform(3.0, 4.0))
    if textured_everywhere:
        amplitude = 0.15
    else:
        t = 0.5 + rng.uniform(0.3, 1.0) * (t - 0.5)  # contrast
        # Fine detail: none on a quarter of the surfaces, else log-uniform in amplitude.
        amplitude = 0.0 if rng.random() < 0.25 else float(np.exp(rng.uniform(np.log(0.01), np.log(0.25))))
    detail = _pink_noise(rng, h, w, rng.uniform(0.5, 1.6))
    image = _palette(rng, t) * (1 + amplitude * detail[..., None])
    return np.clip(image, 0, 1).astype(np.float32)


# --- shapes (anti-aliased coverage) -----------------------------------------------------------

def shape_alpha(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Coverage (H, W) of a random ellipse, rotated rectangle or convex polygon."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    size = rng.uniform(0.12, 0.35) * min(h, w)
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)
    v = -np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)
    kind = rng.integers(3)
    if kind == 0:
        a, b = size, size * rng.uniform(0.4, 1.0)
        sdf = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * min(a, b)
    elif kind == 1:
        a, b = size, size * rng.uniform(0.3, 1.0)
        sdf = np.maximum(np.abs(u) - a, np.abs(v) - b)
    else:
        k = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        mids = (angles + np.roll(angles, -1) + 2 * np.pi * (np.arange(k) == k - 1)) / 2
        half = (np.roll(angles, -1) - angles) % (2 * np.pi) / 2
        normal_dist = size * np.cos(np.minimum(half, np.pi / 2 - 0.05))
        sdf = np.max([np.cos(m) * u + np.sin(m) * v - r for m, r in zip(mids, normal_dist)], axis=0)
    return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)


def _plane(rng: np.random.Generator, h: int, w: int, lo: float, hi: float, slanted: bool) -> np.ndarray:
    """Inverse depth (H, W) of a plane lying within [lo, hi] 1/m over the whole frame.

    For a pinhole camera a plane's inverse depth is affine in image coordinates.
    """
    centre = rng.uniform(lo, hi)
    if not slanted:
        return np.full((h, w), centre, np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (xx + 0.5) / w - 0.5, (yy + 0.5) / h - 0.5
    direction = rng.uniform(0, 2 * np.pi)
    gu, gv = np.cos(direction), np.sin(direction)
    reach = 0.5 * (abs(gu) + abs(gv))  # largest |gu u + gv v| over the frame
    slope = rng.uniform(0, min(centre - lo, hi - centre) / reach)
    return (centre + slope * (gu * u + gv * v)).astype(np.float32)


# --- scenes ---------------------------------------------------------------------------------

def make_scene(cfg: SynthConfig, index: int, split: str) -> FocalStack:
    """Scene `index` of `split`, deterministic for (cfg.seed, split, index)."""
    split_code = 0 if split == "train" else 1
    rng = np.random.default_rng([cfg.seed, split_code, index])
    preset = optics.get_preset(cfg.preset)
    if cfg.f_number is not None:
        preset.f_number = cfg.f_number
    h, w = cfg.height, cfg.width
    d_lo, d_hi = cfg.depth_range()
    inv_lo, inv_hi = 1.0 / d_hi, 1.0 / d_lo
    # Shapes must stand clearly in front of what they cover: at least one slab of CoC nearer.
    gain = max(preset.lens.gain_px(s) for s in preset.focus_distances)
    margin = cfg.bin_px / gain

    surfaces: list[defocus.Surface] = []
    background = _plane(rng, h, w, inv_lo, inv_hi, rng.random() < cfg.slant_probability)
    surfaces.append(defocus.Surface(texture(rng, h, w), np.ones((h, w), np.float32), background))
    visible_inv = background.copy()
    for _ in range(int(rng.integers(0, cfg.max_shapes + 1))):
        alpha = shape_alpha(rng, h, w)
        footprint = alpha > 0
        if not footprint.any():
            continue
        floor = float(visible_inv[footprint].max()) + margin
        if floor >= inv_hi:
            continue
        inv = _plane(rng, h, w, floor, inv_hi, rng.random() < cfg.slant_probability)
        surfaces.append(defocus.Surface(texture(rng, h, w), alpha, inv))
        visible_inv = np.where(alpha >= 0.5, inv, visible_inv)

    linear = [defocus.Surface(imaging.srgb_to_linear(s.color), s.alpha, s.inv_depth) for s in surfaces]
    stack = defocus.render_focal_stack(
        linear, preset.focus_distances, preset.lens, cfg.bin_px
    )
    if cfg.noise_std > 0:  # shot noise grows with the signal; read noise sets a floor
        sigma = cfg.noise_std * np.sqrt(2.0 * stack + 1e-2)
        stack = stack + sigma * rng.standard_normal(stack.shape).astype(np.float32)
    aif = surfaces[0].color
    for s in surfaces[1:]:
        aif = s.color * s.alpha[..., None] + aif * (1 - s.alpha[..., None])
    return FocalStack(
        scene_id=f"synth-{split}-{cfg.seed}-{index:06d}",
        images=_to_uint8(imaging.linear_to_srgb(stack)),
        focus_distances=np.asarray(preset.focus_distances, np.float32),
        focal_length=preset.focal_length,
        f_number=preset.f_number,
        pixel_size=preset.pixel_size,
        depth=(1.0 / visible_inv).astype(np.float32),
        aif=_to_uint8(aif),
    )


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def generate_rows(cfg: SynthConfig, split: str, count: int) -> Iterator[dict]:
    for index in range(count):
        yield stack_to_row(make_scene(cfg, index, split))


def run(cfg: SynthConfig) -> dict:
    """Write `cfg.n_scenes` train and `cfg.n_test` test stacks under `cfg.out`."""
    start = time.perf_counter()
    shards = {}
    for split, count in (("train", cfg.n_scenes), ("test", cfg.n_test)):
        if count:
            shards[split] = write_stacks(generate_rows(cfg, split, count), storage.join(cfg.out, split), cfg.shard_size)
    save_config(cfg, cfg.out)
    seconds = time.perf_counter() - start
    total = cfg.n_scenes + cfg.n_test
    return {
        "out": cfg.out,
        "stacks": {"train": cfg.n_scenes, "test": cfg.n_test},
        "shards": sum(len(v) for v in shards.values()),
        "seconds": round(seconds, 2),
        "stacks_per_second": round(total / seconds, 2),
    }
