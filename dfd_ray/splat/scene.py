"""Per-scene Gaussians seen by one fixed thin-lens camera, and their storage.

Camera frame: x right, y down, z forward (metres); pixel (u, v) has its centre at (u + 0.5, v + 0.5).
Colours are linear RGB. Parameters are stored unconstrained (log scales, opacity logits) so an
optimiser can move them freely.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from dfd_ray import optics, storage

SPLAT_FORMAT_VERSION = 2


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics (pixels) plus the thin lens that blurs what is off focus.

    fx = fy = focal_length / pixel_size: the lens at infinity focus. Focus breathing (the small
    magnification change as the lens refocuses) is ignored; the CoC itself uses the exact image
    distance of each focus setting (docs/design.md §2). The principal point (cx, cy) defaults to the
    image centre; `crop` moves it so that a window of the sensor renders on its own.
    """

    width: int
    height: int
    focal_length: float  # metres
    f_number: float
    pixel_size: float  # metres per pixel
    cx: float = float("nan")  # pixels; NaN: width / 2
    cy: float = float("nan")
    # A cropped camera remembers the whole sensor: projection must not change with the window.
    sensor_width: int = 0  # pixels; 0: width
    sensor_height: int = 0
    origin_x: int = 0  # the window's top-left corner on the sensor, pixels
    origin_y: int = 0

    def __post_init__(self) -> None:
        defaults = {"cx": self.width / 2.0, "cy": self.height / 2.0,
                    "sensor_width": self.width, "sensor_height": self.height}
        for name, value in defaults.items():
            current = getattr(self, name)
            if (isinstance(current, float) and math.isnan(current)) or current == 0:
                object.__setattr__(self, name, value)

    @property
    def fx(self) -> float:
        return self.focal_length / self.pixel_size

    @property
    def fy(self) -> float:
        return self.fx

    @property
    def lens(self) -> optics.Lens:
        return optics.Lens(self.focal_length, self.f_number, self.pixel_size)

    @property
    def aperture(self) -> float:
        """Aperture diameter A = f / N, metres."""
        return self.lens.aperture

    def crop(self, top: int, left: int, height: int, width: int) -> Camera:
        """The camera of the window [top, top + height) × [left, left + width) of this one."""
        if top < 0 or left < 0 or height < 1 or width < 1 or top + height > self.height or left + width > self.width:
            raise ValueError(
                f"window top={top} left={left} {height}x{width} does not fit the {self.height}x{self.width} image"
            )
        return replace(self, width=width, height=height, cx=self.cx - left, cy=self.cy - top,
                       origin_x=self.origin_x + left, origin_y=self.origin_y + top)

    @classmethod
    def from_lens(cls, lens: optics.Lens, width: int, height: int) -> Camera:
        """The whole sensor of `width` x `height` pixels behind `lens`, principal point at its centre."""
        return cls(width, height, float(lens.focal_length), float(lens.f_number), float(lens.pixel_size))

    @classmethod
    def from_stack(cls, stack) -> Camera:
        return cls.from_lens(stack.lens, stack.width, stack.height)


@dataclass
class SceneSplats:
    """N Gaussians in the camera frame. All tensors share one device and dtype."""

    means: torch.Tensor  # (N, 3) metres
    log_scales: torch.Tensor  # (N, 3) log metres
    quats: torch.Tensor  # (N, 4) (w, x, y, z), normalised on use
    opacity_logits: torch.Tensor  # (N,)
    colors: torch.Tensor  # (N, 3) linear RGB
    camera: Camera

    @property
    def n(self) -> int:
        return int(self.means.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "camera"}

    def with_camera(self, camera: Camera) -> SceneSplats:
        return SceneSplats(**self.tensors(), camera=camera)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SceneSplats:
        moved = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in self.tensors().items()}
        return SceneSplats(**moved, camera=self.camera)

    def detach(self) -> SceneSplats:
        return SceneSplats(**{k: v.detach() for k, v in self.tensors().items()}, camera=self.camera)

    def requires_grad_(self) -> SceneSplats:
        for v in self.tensors().values():
            v.requires_grad_(True)
        return self


def splat_uri(store: str, scene_id: str) -> str:
    """Where a splat store keeps one scene: `<store>/<scene_id>.npz`."""
    return storage.join(store, f"{scene_id}.npz")


def save_splats(splats: SceneSplats, uri: str, extra: dict[str, np.ndarray] | None = None) -> None:
    """Write the splats (and optional extra arrays, e.g. depth maps) as an .npz to any fsspec URI.

    npz with allow_pickle=False on load: no code runs when a file is read.
    """
    cam = splats.camera
    arrays = {k: v.detach().cpu().numpy() for k, v in splats.tensors().items()}
    arrays["camera"] = np.array([getattr(cam, f.name) for f in fields(Camera)], np.float64)
    arrays["format_version"] = np.array(SPLAT_FORMAT_VERSION)
    for key, value in (extra or {}).items():
        arrays[f"extra_{key}"] = np.asarray(value)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    storage.write_bytes(uri, buf.getvalue())


def load_splats(uri: str, device: str | torch.device = "cpu") -> tuple[SceneSplats, dict[str, np.ndarray]]:
    """Read splats written by `save_splats`: (splats, extra arrays)."""
    try:
        data = np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no splats at {uri}") from None
    except Exception as exc:
        raise ValueError(f"{uri}: not a dfd-ray splat file: {exc}") from None
    if "format_version" not in data or int(data["format_version"]) != SPLAT_FORMAT_VERSION:
        raise ValueError(f"{uri}: unsupported splat format (expected version {SPLAT_FORMAT_VERSION})")
    # Annotations are strings here (postponed evaluation): "int" marks the pixel counts.
    camera = Camera(**{f.name: int(v) if f.type == "int" else v for f, v in zip(fields(Camera), data["camera"].tolist())})
    names = [f.name for f in fields(SceneSplats) if f.name != "camera"]
    splats = SceneSplats(**{k: torch.from_numpy(data[k]).to(device) for k in names}, camera=camera)
    extra = {k.removeprefix("extra_"): data[k] for k in data.files if k.startswith("extra_")}
    return splats, extra
