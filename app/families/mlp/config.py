"""The `mlp` family's config.json: which architecture, and its sizes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from app.model.config import DTYPES, InvalidModelConfig

Activation = Literal["relu", "gelu", "tanh"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "gelu", "tanh")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """What config.json says: `mlp` with `sizes`, optional bias and activation, a dtype.

    Every field is checked strictly, however the config is built: a wrong type is an error,
    never coerced (`"bias": "false"` is refused, not read as true).
    """

    architecture: str
    sizes: list[int] = field(default_factory=list)
    bias: bool = False
    activation: Activation | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str):
            raise InvalidModelConfig("'architecture' must be a string")
        sizes = self.sizes
        if (
            not isinstance(sizes, list)
            or len(sizes) < 2
            or not all(_is_int(s) and s > 0 for s in sizes)
        ):
            raise InvalidModelConfig("'sizes' must be a list of at least two positive integers")
        if not isinstance(self.bias, bool):
            raise InvalidModelConfig(f"'bias' must be true or false, not {self.bias!r}")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise InvalidModelConfig(f"unknown activation {self.activation!r}")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise InvalidModelConfig(f"dtype must be one of {sorted(DTYPES)}, not {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Build and check a config; unknown keys are ignored, as in HF configs."""
        if not isinstance(raw, dict) or not isinstance(raw.get("architecture"), str):
            raise InvalidModelConfig("config.json must be an object with a string 'architecture'")
        sizes = raw.get("sizes", [])
        return cls(
            architecture=raw["architecture"],
            sizes=list(sizes) if isinstance(sizes, list) else sizes,
            bias=raw.get("bias", False),
            activation=raw.get("activation"),
            dtype=raw.get("dtype", "float32"),
        )

    @classmethod
    def load(cls, folder: Path) -> ModelConfig:
        path = folder / "config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise InvalidModelConfig(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(raw)
