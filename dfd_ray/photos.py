"""Photos to infer on: decoding (PNG, JPEG, TIFF; 8- or 16-bit; grey, RGB or RGBA) and the camera
parameters of each photo, taken per parameter from a manifest, else EXIF, else config defaults.

Units are SI as everywhere in dfd-ray: focus distance, focal length and pixel pitch in metres.
"""

from __future__ import annotations

import io
import posixpath

import numpy as np
from PIL import Image

from dfd_ray import manifest, optics, storage
from dfd_ray.focalstack import image_pixels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
CAMERA_KEYS = ("focus_distance", "focal_length", "f_number", "pixel_size")
# Pixel modes a photo may have: 8-bit grey/palette/RGB/RGBA and 16-bit grey. Alpha is dropped.
_MODES_8BIT = ("L", "LA", "P", "RGB", "RGBA")
_MODES_16BIT = ("I;16", "I;16B", "I;16L")
_FORMATS = ("PNG", "JPEG", "MPO", "TIFF")

# EXIF tags (Exif sub-IFD 0x8769). Focal length in mm, subject distance in m.
_EXIF_IFD, _FOCAL_LENGTH, _F_NUMBER, _SUBJECT_DISTANCE = 0x8769, 0x920A, 0x829D, 0x9206
_FOCAL_PLANE_X_RES, _FOCAL_PLANE_UNIT, _PIXEL_X_DIMENSION = 0xA20E, 0xA210, 0xA002
_RESOLUTION_UNIT_M = {1: None, 2: 25.4e-3, 3: 10e-3, 4: 1e-3, 5: 1e-6}  # EXIF: 2 = inch (default), 3 = cm


class PhotoError(ValueError):
    """A photo that cannot be used; the message says what is wrong with it."""


def decode_photo(data: bytes) -> tuple[np.ndarray, dict[str, float]]:
    """File bytes → ((H, W, 3) uint16 image on the full 16-bit scale, camera values found in EXIF)."""
    if not data:
        raise PhotoError("empty file (0 bytes)")
    try:
        pil = Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises several types for non-images
        raise PhotoError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    with pil:
        if pil.format not in _FORMATS:
            raise PhotoError(f"unsupported format {pil.format} (expected PNG, JPEG or TIFF)")
        if pil.mode not in _MODES_8BIT + _MODES_16BIT:
            raise PhotoError(f"unsupported pixel mode {pil.mode!r} (expected 8- or 16-bit grey, RGB or RGBA)")
        try:
            pil.load()
        except Exception as exc:
            raise PhotoError(f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from None
        try:
            camera = exif_camera(pil)
        except Exception:  # a damaged EXIF block costs the EXIF values, not the photo
            camera = {}
        pixels = image_pixels(pil)
    image = pixels if pixels.dtype == np.uint16 else pixels.astype(np.uint16) * 257  # 255 → 65535 exactly
    return image, camera


def exif_camera(pil: Image.Image) -> dict[str, float]:
    """Camera values in SI units from a photo's EXIF; only the ones present and usable."""
    exif = pil.getexif()
    tags = {**dict(exif), **dict(exif.get_ifd(_EXIF_IFD))}

    def number(tag: int) -> float | None:
        try:
            value = float(tags[tag])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        return value if np.isfinite(value) and value > 0 else None

    out: dict[str, float] = {}
    if (mm := number(_FOCAL_LENGTH)) is not None:
        out["focal_length"] = mm * 1e-3
    if (n := number(_F_NUMBER)) is not None:
        out["f_number"] = n
    distance = number(_SUBJECT_DISTANCE)
    if distance is not None and distance < 4.29e9:  # 0xFFFFFFFF means infinity: no usable focus
        out["focus_distance"] = distance
    unit = _RESOLUTION_UNIT_M.get(int(tags.get(_FOCAL_PLANE_UNIT, 2)))
    per_unit = number(_FOCAL_PLANE_X_RES)
    if unit and per_unit:
        pitch = unit / per_unit
        # The focal-plane resolution describes the sensor; a photo resized after capture has a
        # coarser effective pitch, which PixelXDimension (the width at capture) reveals.
        captured_width = number(_PIXEL_X_DIMENSION)
        if captured_width and pil.width and int(captured_width) != pil.width:
            pitch *= captured_width / pil.width
        out["pixel_size"] = pitch
    return out


def resolve_camera(manifest: dict | None, exif: dict, defaults: dict) -> tuple[dict[str, float], str]:
    """(camera values, source) taking each value from the manifest, else EXIF, else the defaults.

    The source is one word ("manifest", "exif", "default") when every value came from the same
    place, else `key:source` pairs, e.g. "focus_distance:manifest,focal_length:exif,...".
    """
    values, sources, missing = {}, {}, []
    for key in CAMERA_KEYS:
        for source, table in (("manifest", manifest or {}), ("exif", exif), ("default", defaults)):
            value = table.get(key)
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                values[key], sources[key] = float(value), source
                break
        else:
            missing.append(key)
    if missing:
        raise PhotoError(f"no camera {', '.join(missing)}: not in the manifest, the EXIF or the config defaults")
    try:  # the thin lens's own checks: positive values, focused beyond its focal length
        lens = optics.Lens(values["focal_length"], values["f_number"], values["pixel_size"])
        lens.gain_px(values["focus_distance"])
    except optics.OpticsError as exc:
        raise PhotoError(f"camera: {exc}") from None
    distinct = set(sources.values())
    source = distinct.pop() if len(distinct) == 1 else ",".join(f"{k}:{sources[k]}" for k in CAMERA_KEYS)
    return values, source


# --- the camera manifest --------------------------------------------------------------------

def read_camera_manifest(uri: str, input_prefix: str) -> dict[str, dict]:
    """Rows of a CSV, JSON-lines, JSON or Parquet manifest (`dfd_ray.manifest`), keyed by the
    photo's key under `input_prefix`.

    Columns: `path` (a key relative to the input prefix, or a full URI under it), any of
    focus_distance, focal_length, f_number, pixel_size (metres; empty = not given) and an optional
    `scene_id` grouping photos of one scene for fusion. Raises ValueError naming the manifest and
    the line or column at fault.
    """
    rows, problems = manifest.read_rows(uri, ("path", "scene_id", *CAMERA_KEYS), required=("path",))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"manifest {uri}: {problems[0]}{more}")
    out: dict[str, dict] = {}
    for where, row in rows:
        if not row.get("path"):
            raise ValueError(f"manifest {uri}: {where}: empty path")
        entry: dict = {"scene_id": str(row["scene_id"]) if row.get("scene_id") not in (None, "") else ""}
        for key in CAMERA_KEYS:
            value = row.get(key)
            if value is None or value == "":
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"manifest {uri}: {where}: {key} {value!r} is not a number") from None
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"manifest {uri}: {where}: {key} must be a positive number of metres "
                                 f"(or the f-number), got {value!r}")
            entry[key] = value
        key = photo_key(str(row["path"]), input_prefix)
        if key in out:
            raise ValueError(f"manifest {uri}: {where}: {row['path']} listed twice")
        out[key] = entry
    return out


def photo_key(path: str, input_prefix: str) -> str:
    """The key of a photo relative to the input prefix ('a/b.jpg'); full URIs under it are cut."""
    prefix = input_prefix.rstrip("/") + "/"
    if path.startswith(prefix) or path + "/" == prefix:
        path = path[len(prefix):]
    if "://" in path:
        return path
    path = posixpath.normpath(path.lstrip("/"))
    return "" if path == "." else path


def list_photos(prefix: str) -> tuple[list[str], int]:
    """(URIs of every photo under `prefix`, recursively, sorted; count of other files ignored)."""
    found = storage.list_tree(prefix)
    photos = [p for p in found if p.lower().endswith(IMAGE_EXTENSIONS)]
    return photos, len(found) - len(photos)
