"""LoRA math in pure torch: no HTTP, no files, no model architecture."""

from app.lora.config import LoraConfig, lora_scaling, pattern_key
from app.lora.mixed import MixedBatch, Segment
from app.lora.ops import (
    LinearFn,
    LoraAdapter,
    LoraModule,
    init_lora_module,
    lora_delta,
    merge_adapter,
    merged_linear,
    unmerged_linear,
)

__all__ = [
    "LinearFn",
    "LoraAdapter",
    "LoraConfig",
    "LoraModule",
    "MixedBatch",
    "Segment",
    "init_lora_module",
    "lora_delta",
    "lora_scaling",
    "merge_adapter",
    "merged_linear",
    "pattern_key",
    "unmerged_linear",
]
