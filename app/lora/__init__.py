"""LoRA math in pure torch: no HTTP, no files, no model architecture."""

from app.lora.config import LoraConfig, lora_scaling, pattern_key
from app.lora.layers import (
    DeltaPlan,
    LoraLayer,
    base_layer,
    by_row_count,
    current_plan,
    plan_scope,
    wrap_layers,
)
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
from app.lora.stacked import AdapterStack, StackedBatch, rank_bucket

__all__ = [
    "AdapterStack",
    "DeltaPlan",
    "LinearFn",
    "LoraAdapter",
    "LoraConfig",
    "LoraLayer",
    "LoraModule",
    "MixedBatch",
    "Segment",
    "StackedBatch",
    "base_layer",
    "by_row_count",
    "current_plan",
    "init_lora_module",
    "lora_delta",
    "lora_scaling",
    "merge_adapter",
    "merged_linear",
    "pattern_key",
    "plan_scope",
    "rank_bucket",
    "unmerged_linear",
    "wrap_layers",
]
