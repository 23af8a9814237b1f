"""Thin-lens defocus model (docs/design.md §2). SI units: metres everywhere, pixels only where named.

Every function accepts Python floats, numpy arrays or torch tensors (broadcasting, differentiable
for tensors) and returns the same kind. Symbols:

    f  focal length [m]     N  f-number     A = f / N  aperture diameter [m]
    s  focus distance [m]   d  scene depth [m]          p  pixel pitch [m / pixel]

    c(d)  = A f |d - s| / (d (s - f))       CoC diameter on the sensor [m]
    c±(d) = K (d - s) / d,  K = A f / (s - f)   signed: positive behind the focus plane
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

Num = TypeVar("Num", float, np.ndarray, torch.Tensor)


class OpticsError(ValueError):
    """A lens or scene quantity outside the thin-lens model's domain."""


def _any(mask: Any) -> bool:
    if isinstance(mask, torch.Tensor):
        return bool(mask.any().item())
    return bool(np.any(mask))


def _require_positive(name: str, value: Any) -> None:
    if _any(value <= 0) or _any(value != value):  # the second test catches NaN
        raise OpticsError(f"{name} must be positive, got {_describe(value)}")


def _describe(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return f"array with min {np.nanmin(arr):.6g} and max {np.nanmax(arr):.6g}"
    return repr(value)


def _check_lens(focus_distance: Any, focal_length: Any, f_number: Any) -> None:
    _require_positive("focal_length", focal_length)
    _require_positive("f_number", f_number)
    _require_positive("focus_distance", focus_distance)
    if _any(focus_distance <= focal_length):
        raise OpticsError(
            "focus_distance must exceed focal_length (a lens cannot focus closer than f): "
            f"focus_distance={_describe(focus_distance)}, focal_length={_describe(focal_length)}"
        )


def _abs(x: Num) -> Num:
    return abs(x)  # builtin abs dispatches to float, numpy and torch alike


def aperture_diameter(focal_length: Num, f_number: Num) -> Num:
    """A = f / N [m]."""
    _require_positive("focal_length", focal_length)
    _require_positive("f_number", f_number)
    return focal_length / f_number


def image_distance(focus_distance: Num, focal_length: Num) -> Num:
    """Lens-to-sensor distance v = s f / (s - f) [m] for a lens focused at s."""
    _check_lens(focus_distance, focal_length, 1.0)
    return focus_distance * focal_length / (focus_distance - focal_length)


def coc_gain(focus_distance: Num, focal_length: Num, f_number: Num) -> Num:
    """K = A f / (s - f) [m]: the CoC diameter of a point at infinity; |c±| = K |1 - s/d|."""
    _check_lens(focus_distance, focal_length, f_number)
    return (focal_length / f_number) * focal_length / (focus_distance - focal_length)


def coc_gain_px(focus_distance: Num, focal_length: Num, f_number: Num, pixel_size: Num) -> Num:
    """G = A v / p [pixel·metres]: the CoC in pixels is G |1/d - 1/s|, linear in inverse depth."""
    return gain_px_of_aperture(focus_distance, focal_length, aperture_diameter(focal_length, f_number), pixel_size)


def gain_px_of_aperture(focus_distance: Num, focal_length: Num, aperture: Num, pixel_size: Num) -> Num:
    """G = A v / p [pixel·metres] for an aperture diameter A [m] given directly: differentiable in
    A, and A = 0 is a pinhole (G = 0), which an f-number cannot express."""
    _require_positive("pixel_size", pixel_size)
    return aperture * image_distance(focus_distance, focal_length) / pixel_size


def coc_px_at_inverse_depth(inverse_depth: Num, focus_distance: Num, gain_px: Num) -> Num:
    """CoC [px] of a point at inverse depth u [1/m]: G |u - 1/s|, G from `coc_gain_px`."""
    return gain_px * _abs(inverse_depth - 1.0 / focus_distance)


def inverse_depth_at_coc_px(coc_px_: Num, side: Num, focus_distance: Num, gain_px: Num) -> Num:
    """The inverse depth [1/m] on `side` (+1 in front of the focus plane, -1 behind it) that blurs to
    `coc_px_` pixels: 1/s + side · c / G. Behind the plane it can reach 0 or below (no finite depth)."""
    return 1.0 / focus_distance + side * coc_px_ / gain_px


def coc_signed(depth: Num, focus_distance: Num, focal_length: Num, f_number: Num) -> Num:
    """Signed CoC diameter on the sensor [m]; positive for points behind the focus plane."""
    _require_positive("depth", depth)
    k = coc_gain(focus_distance, focal_length, f_number)
    return k * (depth - focus_distance) / depth


def coc(depth: Num, focus_distance: Num, focal_length: Num, f_number: Num) -> Num:
    """CoC diameter on the sensor [m] (unsigned)."""
    return _abs(coc_signed(depth, focus_distance, focal_length, f_number))


def coc_px(depth: Num, focus_distance: Num, focal_length: Num, f_number: Num, pixel_size: Num) -> Num:
    """CoC diameter in pixels for sensor pitch `pixel_size` [m/pixel]."""
    _require_positive("pixel_size", pixel_size)
    return coc(depth, focus_distance, focal_length, f_number) / pixel_size


def coc_signed_px(
    depth: Num, focus_distance: Num, focal_length: Num, f_number: Num, pixel_size: Num
) -> Num:
    """Signed CoC diameter in pixels (positive behind the focus plane)."""
    _require_positive("pixel_size", pixel_size)
    return coc_signed(depth, focus_distance, focal_length, f_number) / pixel_size


def depth_from_signed_coc(
    coc_signed_m: Num, focus_distance: Num, focal_length: Num, f_number: Num
) -> Num:
    """Inverse of `coc_signed`: d = s K / (K - c±) [m]. Requires c± < K (finite depth)."""
    k = coc_gain(focus_distance, focal_length, f_number)
    if _any(coc_signed_m >= k):
        raise OpticsError(
            f"signed CoC must be below K = A f / (s - f) = {_describe(k)} m for a finite depth, "
            f"got {_describe(coc_signed_m)}"
        )
    return focus_distance * k / (k - coc_signed_m)


def depth_from_coc(
    coc_m: Num, focus_distance: Num, focal_length: Num, f_number: Num
) -> tuple[Num, Num]:
    """Both depths [m] that blur to an unsigned CoC `coc_m` [m]: (d_near, d_far).

    d_near = s K / (K + c) lies in front of the focus plane, d_far = s K / (K - c) behind it.
    A CoC of K or more can only come from in front of the focus plane: d_far is +inf there.
    """
    if _any(coc_m < 0):
        raise OpticsError(f"unsigned CoC must be >= 0, got {_describe(coc_m)}")
    k = coc_gain(focus_distance, focal_length, f_number)
    near = focus_distance * k / (k + coc_m)
    gap = k - coc_m
    if isinstance(gap, torch.Tensor):
        far = torch.where(gap > 0, focus_distance * k / gap.clamp_min(1e-30), torch.inf)
    elif isinstance(gap, np.ndarray) or isinstance(near, np.ndarray):
        with np.errstate(divide="ignore"):
            far = np.where(gap > 0, focus_distance * k / np.maximum(gap, 1e-30), np.inf)
    else:
        far = focus_distance * k / gap if gap > 0 else float("inf")
    return near, far


def depth_from_coc_px(
    coc_px_: Num, focus_distance: Num, focal_length: Num, f_number: Num, pixel_size: Num
) -> tuple[Num, Num]:
    """`depth_from_coc` for a CoC given in pixels."""
    _require_positive("pixel_size", pixel_size)
    return depth_from_coc(coc_px_ * pixel_size, focus_distance, focal_length, f_number)


@dataclass(frozen=True)
class Lens:
    """A thin lens on a sensor: focal length f [m], f-number N and pixel pitch p [m / pixel].

    The one lens type of the project: datasets, importers, the splat camera, inference's camera
    resolution and the training step all describe their lens with it. Fields are floats, or
    tensors of one lens per image (broadcasting, as every function of this module).
    """

    focal_length: Any
    f_number: Any
    pixel_size: Any

    def __post_init__(self) -> None:
        for name in ("focal_length", "f_number", "pixel_size"):
            _require_positive(name, getattr(self, name))

    @property
    def aperture(self) -> Any:
        """A = f / N [m]."""
        return aperture_diameter(self.focal_length, self.f_number)

    def gain_px(self, focus_distance: Num) -> Num:
        """G [pixel·metres] at focus distance s: the CoC in pixels is G |1/d - 1/s| (`coc_gain_px`)."""
        return coc_gain_px(focus_distance, self.focal_length, self.f_number, self.pixel_size)

    def coc_px(self, depth: Num, focus_distance: Num) -> Num:
        """CoC diameter [px] of a point at `depth` [m] with the lens focused at `focus_distance` [m]."""
        return coc_px(depth, focus_distance, self.focal_length, self.f_number, self.pixel_size)

    def depths_at_coc_px(self, coc_px_: Num, focus_distance: Num) -> tuple[Num, Num]:
        """(d_near, d_far) [m] that blur to `coc_px_` pixels (`depth_from_coc_px`)."""
        return depth_from_coc_px(coc_px_, focus_distance, self.focal_length, self.f_number, self.pixel_size)

    def summary(self) -> dict[str, float]:
        """The lens in SI units with the units in the keys (run summaries, manifests)."""
        return {"focal_length_m": float(self.focal_length), "f_number": float(self.f_number),
                "pixel_size_m": float(self.pixel_size)}


@dataclass
class CameraPreset:
    """A camera of a public dataset: lens, sensor pitch, focal stack and the depth range it sees."""

    name: str = "fod500"
    focal_length: float = 2.9e-3  # metres
    f_number: float = 1.0
    pixel_size: float = 3.1e-3 / 256  # metres per pixel (sensor pitch)
    focus_distances: list[float] = field(default_factory=lambda: [0.1, 0.15, 0.3, 0.7, 1.5])
    height: int = 256  # native image size, pixels
    width: int = 256
    min_depth: float = 0.1  # metres
    max_depth: float = 3.0
    eval_max_depth: float = 1.5  # evaluation clip used by published work on this camera

    @property
    def lens(self) -> Lens:
        return Lens(self.focal_length, self.f_number, self.pixel_size)

    def coc_px(self, depth: Num, focus_distance: Num) -> Num:
        return self.lens.coc_px(depth, focus_distance)


PRESETS: dict[str, CameraPreset] = {
    # DefocusNet (CVPR 2020). The pitch is not published; later work uses a 3.1 mm sensor / 256 px.
    "fod500": CameraPreset(),
    # DEReD (CVPR 2023) NYUv2 focal stacks.
    "nyuv2": CameraPreset(
        name="nyuv2",
        focal_length=50e-3,
        f_number=8.0,
        pixel_size=12e-6,
        focus_distances=[1.0, 1.5, 2.5, 4.0, 6.0],
        height=240,
        width=320,
        min_depth=0.1,
        max_depth=10.0,
        eval_max_depth=10.0,
    ),
}


def get_preset(name: str) -> CameraPreset:
    """The named camera preset (a copy, safe to modify)."""
    if name not in PRESETS:
        raise OpticsError(f"unknown camera preset {name!r}; valid choices: {sorted(PRESETS)}")
    preset = PRESETS[name]
    return CameraPreset(**{**preset.__dict__, "focus_distances": list(preset.focus_distances)})
