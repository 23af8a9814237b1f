"""Models on disk or in an object store: `model.pt` (a state dict, loaded with weights_only=True)
and `model.json` (the ModelConfig and what the model was trained on). A checkpoint folder holds
the same two files, so any checkpoint is also a model URI."""

from __future__ import annotations

import dataclasses
import io
import json

import torch

from dfd_ray import storage
from dfd_ray.models.nets import DFDModel, ModelConfig

WEIGHTS, META = "model.pt", "model.json"


def save_model(model: DFDModel, uri: str, info: dict | None = None) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    storage.write_bytes(storage.join(uri, WEIGHTS), buf.getvalue())
    meta = {"model": dataclasses.asdict(model.cfg), **(info or {})}
    storage.write_bytes(storage.join(uri, META), json.dumps(meta, indent=2).encode())


def load_model(uri: str, device: str = "cpu") -> tuple[DFDModel, dict]:
    """(model in eval mode, its metadata) from a model or checkpoint URI."""
    try:
        meta = json.loads(storage.read_bytes(storage.join(uri, META)))
        weights = storage.read_bytes(storage.join(uri, WEIGHTS))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{uri} is not a dfd-ray model: {exc}") from None
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items() if k in fields})
    model = DFDModel(cfg)
    model.load_state_dict(torch.load(io.BytesIO(weights), map_location=device, weights_only=True))
    return model.to(device).eval(), meta
