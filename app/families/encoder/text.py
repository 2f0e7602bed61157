"""An encoder's texts: tokenized, and pooled into one embedding each as sentence-transformers does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from app.model.tokens import TokenBatch

Pooling = Literal["mean", "cls", "max"]


@dataclass(frozen=True)
class TextEncoder:
    """A tokenizer and what turns the model's token states into one embedding per text."""

    tokenizer: Any  # a transformers tokenizer
    max_seq_length: int
    pooling: Pooling
    normalize: bool

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids, truncated to `max_seq_length` as sentence-transformers truncates."""
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return TokenBatch(enc["input_ids"], enc["attention_mask"])

    def embed(self, model: nn.Module, batch: TokenBatch) -> Tensor:
        """(N, dim) fp32 embeddings: the model's last hidden states, pooled (and normalized)."""
        states = model(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
        states = states.float()  # pooled in fp32 on a bf16 or fp16 base (a no-op in fp32)
        mask = batch.mask.unsqueeze(-1).to(states.dtype)  # (N, T, 1)
        if self.pooling == "cls":
            pooled = states[:, 0]
        elif self.pooling == "max":
            pooled = states.masked_fill(mask == 0, float("-inf")).amax(dim=1)
        else:
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled
