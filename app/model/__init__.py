"""The frozen base model: architectures, config, loading."""

from app.model.config import InvalidModelConfig, ModelConfig
from app.model.loader import BaseModel, LinearInfo, build_module, load_base_model, resolve_device
from app.model.mlp import MLP, plain_linear

__all__ = [
    "MLP",
    "BaseModel",
    "InvalidModelConfig",
    "LinearInfo",
    "ModelConfig",
    "build_module",
    "load_base_model",
    "plain_linear",
    "resolve_device",
]
