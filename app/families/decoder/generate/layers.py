"""The small pieces of a decoder layer the engine computes its own way (each equal to what
transformers' modules compute: tests/generate/test_forward.py)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.lora.gather import take_rows


def embed_rows(embedding: Any, ids: Tensor) -> Tensor:
    """An embedding's rows (a plain nn.Embedding's through take_rows: fast for bf16 on a CPU)."""
    if type(embedding) is nn.Embedding and embedding.max_norm is None:
        return take_rows(embedding.weight, ids)
    return embedding(ids)  # type: ignore[no-any-return]


# transformers' RMSNorms that compute weight * (x * rsqrt(mean(x^2) + eps)) in fp32, cast back.
_RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})


def rms_norm(norm: Any, x: Tensor) -> Tensor:
    """`norm(x)` for a Llama-style RMSNorm (computed in fp32, cast back, then scaled, as
    transformers does) in four ops where its module takes eight; any other norm as it is."""
    if type(norm).__name__ not in _RMS_NORMS:
        return norm(x)  # type: ignore[no-any-return]
    h = F.rms_norm(x.float(), (x.shape[-1],), None, norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)  # type: ignore[no-any-return]


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
