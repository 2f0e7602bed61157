"""What every family's loader may refuse, and the dtypes a config may name."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class InvalidModelConfig(ValueError):
    """config.json is missing, malformed, or names something we cannot build."""
