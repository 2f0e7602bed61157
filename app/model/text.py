"""Text inputs for transformer bases: tokenized batches, and pooling as sentence-transformers does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Pooling = Literal["mean", "cls", "max"]


@dataclass(frozen=True)
class TokenBatch:
    """Padded token ids of a batch of texts: each row one text (one sequence)."""

    ids: Tensor  # (N, T) long
    mask: Tensor  # (N, T) long, 1 for real tokens

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, index: Any) -> TokenBatch:
        """Rows by index (an int slice or an index tensor), trimmed to their longest text."""
        ids, mask = self.ids[index], self.mask[index]
        width = max(1, int(mask.sum(dim=1).max())) if len(mask) else 1
        return TokenBatch(ids[:, :width], mask[:, :width])

    @property
    def tokens(self) -> int:
        """Real tokens, padding excluded."""
        return int(self.mask.sum())

    @property
    def device(self) -> torch.device:
        return self.ids.device

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def to(self, device: torch.device) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.mask.to(device))

    @staticmethod
    def cat(parts: Sequence[TokenBatch]) -> TokenBatch:
        """One batch of all the parts' rows, padded to the longest."""
        width = max(p.width for p in parts)
        ids = torch.cat([F.pad(p.ids, (0, width - p.width)) for p in parts])
        mask = torch.cat([F.pad(p.mask, (0, width - p.width)) for p in parts])
        return TokenBatch(ids, mask)


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
