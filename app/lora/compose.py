"""Several adapters combined into one, as PEFT's `add_weighted_adapter` combines them.

Each source brings a weight (its scale in the composition). The result targets the union of the
sources' modules (a source without a module adds nothing there), with `r = lora_alpha = rank` so
its scaling is 1 and the weights carry everything:
- `cat`: the sources' A (times weight and scaling) stacked, and their B side by side; exact, its
  rank the sum of theirs;
- `linear`: A and B each a weighted sum (every source of one rank); an approximation;
- `svd`, `ties_svd`, `dare_ties_svd`: the weighted sum of the full updates (TIES: each pruned to
  its largest `density` share, and entries of the minority sign dropped; DARE: pruned at random
  and rescaled first), cut back to `rank` by an SVD.
The arithmetic follows PEFT's order of operations, so the two agree to float rounding (tests
compare them); DARE draws its masks from a generator seeded with `seed`, module by module in
model order, as PEFT draws from torch's global one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from app.lora.config import LoraConfig
from app.lora.ops import LoraAdapter, LoraModule

Method = Literal["cat", "linear", "svd", "ties_svd", "dare_ties_svd"]
METHODS: tuple[Method, ...] = ("cat", "linear", "svd", "ties_svd", "dare_ties_svd")


class CompositionError(ValueError):
    """Sources and arguments that cannot be combined (the message says why)."""


def _max_rank(adapter: LoraAdapter) -> int:
    config = adapter.config
    return max(config.r, *config.rank_pattern.values()) if config.rank_pattern else config.r


def result_rank(
    sources: Sequence[tuple[LoraAdapter, float]], method: Method, rank: int | None
) -> int:
    """The rank of the combined adapter (as PEFT sizes it)."""
    ranks = [_max_rank(a) for a, _ in sources]
    if method == "cat":
        return sum(ranks)
    if method == "linear":
        if len(set(ranks)) != 1:
            raise CompositionError(f"`linear` needs sources of one rank; theirs are {ranks}")
        return ranks[0]
    return rank or max(ranks)


def compose(
    sources: Sequence[tuple[LoraAdapter, float]],
    method: Method,
    order: Sequence[str],
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
) -> LoraAdapter:
    """One adapter from `sources` (adapter, weight); `order`: the base's layers in model order."""
    if not sources:
        raise CompositionError("a composition needs at least one source")
    if len(sources) == 1:
        method = "linear"  # PEFT's rule: one source is combined linearly whatever was asked
    if method in ("ties_svd", "dare_ties_svd") and density is None:
        raise CompositionError(f"`{method}` needs a density")
    new_rank = result_rank(sources, method, rank)
    targets = [m for m in order if any(m in a.modules for a, _ in sources)]
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name in targets:
        present = [(a.modules[name], w) for a, w in sources if name in a.modules]
        if method == "cat":
            lora_A, lora_B = _cat(present)
        elif method == "linear":
            lora_A, lora_B = _linear(present)
        else:
            lora_A, lora_B = _svd(present, method, new_rank, density, generator)
        modules[name] = LoraModule(_rows(lora_A, new_rank), _columns(lora_B, new_rank), 1.0)
    first = sources[0][0].config
    # As PEFT copies the first source's config: its use_rslora stays (scaling sqrt(r) then).
    config = LoraConfig(new_rank, float(new_rank), tuple(targets), first.use_rslora)
    if first.use_rslora:
        modules = {
            n: LoraModule(m.lora_A, m.lora_B, math.sqrt(new_rank)) for n, m in modules.items()
        }
    return LoraAdapter(config, modules)


def _rows(a: Tensor, rank: int) -> Tensor:
    """A (r, in) zero-padded to `rank` rows."""
    return torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])]) if a.shape[0] < rank else a


def _columns(b: Tensor, rank: int) -> Tensor:
    """B (out, r) zero-padded to `rank` columns."""
    pad = rank - b.shape[1]
    return torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1) if pad > 0 else b


def _cat(present: list[tuple[LoraModule, float]]) -> tuple[Tensor, Tensor]:
    lora_A = torch.cat([m.lora_A * w * m.scaling for m, w in present], dim=0)
    lora_B = torch.cat([m.lora_B for m, _ in present], dim=1)
    return lora_A, lora_B


def _weighted_sum(tensors: list[Tensor], weights: Tensor) -> Tensor:
    stacked = torch.stack(tensors, dim=0)
    return (stacked * weights.view(-1, *([1] * (stacked.dim() - 1)))).sum(dim=0)


def _linear(present: list[tuple[LoraModule, float]]) -> tuple[Tensor, Tensor]:
    # sqrt(|w s|) on each side, the sign on A alone, so that B A carries w s exactly once.
    scaled = [w * m.scaling for m, w in present]
    weights_A = torch.tensor([math.sqrt(abs(v)) * (1 if v >= 0 else -1) for v in scaled])
    weights_B = torch.tensor([math.sqrt(abs(v)) for v in scaled])
    dtype = present[0][0].lora_A.dtype
    lora_A = _weighted_sum([m.lora_A for m, _ in present], weights_A).to(dtype)
    lora_B = _weighted_sum([m.lora_B for m, _ in present], weights_B).to(dtype)
    return lora_A, lora_B


def _pruned(delta: Tensor, density: float, method: Method, generator: torch.Generator) -> Tensor:
    if density >= 1:
        return delta
    if method == "dare_ties_svd":
        mask = torch.bernoulli(torch.full_like(delta, density), generator=generator)
        return delta * mask / density
    keep = torch.zeros_like(delta).reshape(-1)
    keep[torch.topk(delta.abs().reshape(-1), k=int(density * delta.numel())).indices] = 1
    return delta * keep.reshape(delta.shape)


def _svd(
    present: list[tuple[LoraModule, float]],
    method: Method,
    rank: int,
    density: float | None,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    deltas = [(m.lora_B @ m.lora_A) * m.scaling for m, _ in present]
    weights = torch.tensor([w for _, w in present])
    if method == "svd":
        delta = _weighted_sum(deltas, weights)
    else:
        assert density is not None
        stacked = torch.stack([_pruned(d, density, method, generator) for d in deltas])
        # TIES: each entry keeps the sources that agree with the sign of the entries' total.
        majority = torch.where(stacked.sum(dim=0) >= 0, 1, -1)
        agree = stacked.sign() == majority
        weighted = stacked * weights.view(-1, 1, 1)
        delta = (weighted * agree).sum(dim=0) / torch.clamp(agree.sum(dim=0), min=1.0)
    u, s, vh = torch.linalg.svd(delta, full_matrices=True)
    return vh[:rank, :], u[:, :rank] @ torch.diag(s[:rank])
