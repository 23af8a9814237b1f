"""Networks: SDNet (image → CoC) and DepthNet (CoC → metric depth through the thin lens)."""

from dfd_ray.models.nets import DepthNet, DFDModel, ModelConfig, SDNet
from dfd_ray.models.store import load_model, save_model

__all__ = ["DFDModel", "DepthNet", "ModelConfig", "SDNet", "load_model", "save_model"]
