"""The frozen base model as the shared code sees it, whatever its family."""

from app.model.base import BaseModel, LinearInfo, Rows, file_sha256, resolve_device
from app.model.config import InvalidModelConfig
from app.model.tokens import TokenBatch

__all__ = [
    "BaseModel",
    "InvalidModelConfig",
    "LinearInfo",
    "Rows",
    "TokenBatch",
    "file_sha256",
    "resolve_device",
]
