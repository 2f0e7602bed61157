"""Token rows: what a transformer base (an encoder or a decoder) takes as one batch of texts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


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

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> TokenBatch:
        """On `device`; token ids keep their integer dtype (`dtype` is a tensor's, for vectors)."""
        return TokenBatch(self.ids.to(device), self.mask.to(device))

    @staticmethod
    def cat(parts: Sequence[TokenBatch]) -> TokenBatch:
        """One batch of all the parts' rows, padded to the longest."""
        width = max(p.width for p in parts)
        ids = torch.cat([F.pad(p.ids, (0, width - p.width)) for p in parts])
        mask = torch.cat([F.pad(p.mask, (0, width - p.width)) for p in parts])
        return TokenBatch(ids, mask)
