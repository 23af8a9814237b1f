"""Models on disk or in an object store: `model.pt` (a state dict, loaded with weights_only=True)
and `model.json` (the architecture, the ModelConfig and what the model was trained on). A
checkpoint folder holds the same two files, so any checkpoint is also a model URI.

The project ships one trained model (`SHIPPED`, in the package: docs/model_card.md); commands that
take a model use it when none is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os

import torch

from dfd_ray import storage
from dfd_ray.models.nets import ARCH, DFDModel, ModelConfig

WEIGHTS, META = "model.pt", "model.json"
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shipped", "fod500")


def model_uri(uri: str) -> str:
    """`uri`, or the shipped model where it is empty."""
    return uri or SHIPPED


def save_model(model: DFDModel, uri: str, info: dict | None = None) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    storage.write_bytes(storage.join(uri, WEIGHTS), buf.getvalue())
    meta = {"arch": ARCH, "model": dataclasses.asdict(model.cfg), **(info or {})}
    storage.write_bytes(storage.join(uri, META), json.dumps(meta, indent=2).encode())


def read_meta(uri: str) -> dict:
    """A model's model.json, checked: FileNotFoundError where there is none, ValueError where it
    holds another architecture than this dfd-ray builds."""
    try:
        meta = json.loads(storage.read_bytes(storage.join(uri, META)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} is not a dfd-ray model: it holds no {META}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{storage.join(uri, META)} is torn or corrupt (not JSON: {exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ValueError(f"{storage.join(uri, META)} is not a dfd-ray model description (no 'model' section)")
    if meta.get("arch") != ARCH:
        raise ValueError(f"{uri} holds a model of architecture {meta.get('arch', 'unnamed (before v2)')!r}; "
                         f"this dfd-ray loads {ARCH!r} models: retrain it with dfd-ray train")
    return meta


def checked_model_uri(uri: str, key: str) -> str:
    """A model URI given as config key `key`, checked before any cluster work (a ConfigError naming
    the key where it holds no loadable model), a local path made absolute: Ray workers do not run
    in the driver's folder."""
    from dfd_ray.config import ConfigError

    try:
        read_meta(uri)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"config key '{key}': {exc}") from None
    return os.path.abspath(uri.removeprefix("file://")) if storage.is_local(uri) else uri


def weights_digest(uri: str) -> str:
    """A model's identity: the first 16 hex digits of its weights' SHA-256 (a model retrained into
    the same folder is another model)."""
    return hashlib.sha256(storage.read_bytes(storage.join(model_uri(uri), WEIGHTS))).hexdigest()[:16]


def load_model(uri: str, device: str = "cpu") -> tuple[DFDModel, dict]:
    """(model in eval mode, its metadata) from a model or checkpoint URI ("" = the shipped model)."""
    uri = model_uri(uri)
    meta = read_meta(uri)
    try:
        weights = storage.read_bytes(storage.join(uri, WEIGHTS))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} is not a dfd-ray model: it holds no {WEIGHTS}") from None
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items() if k in fields})
    model = DFDModel(cfg)
    try:
        state = torch.load(io.BytesIO(weights), map_location=device, weights_only=True)
        state.setdefault("gain_range", model.gain_range)  # saved before the range was kept: unbounded
        model.load_state_dict(state)
    except Exception as exc:  # a torn file fails in unpickling or zip reading, a foreign one in the keys
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{storage.join(uri, WEIGHTS)} is torn, corrupt or does not match {META}: {first}") from None
    return model.to(device).eval(), meta
