"""The frozen base model: architectures, config, loading."""

from app.model.config import InvalidModelConfig, ModelConfig
from app.model.loader import (
    BaseModel,
    LinearInfo,
    Rows,
    build_module,
    load_base_model,
    resolve_device,
)
from app.model.mlp import MLP
from app.model.text import TextEncoder, TokenBatch

__all__ = [
    "MLP",
    "BaseModel",
    "InvalidModelConfig",
    "LinearInfo",
    "ModelConfig",
    "Rows",
    "TextEncoder",
    "TokenBatch",
    "build_module",
    "load_base_model",
    "resolve_device",
]
