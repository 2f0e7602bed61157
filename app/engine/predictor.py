"""Run a batch of rows, each naming its own adapter (or none), merged or unmerged."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor

from app.adapters.registry import AdapterRecord, AdapterRegistry
from app.engine.compositions import Compositions, Parts, contains, parts_of
from app.engine.merged import MergedCache
from app.engine.policy import Mode, runs_merged
from app.errors import ServiceError
from app.lora import (
    AdapterStack,
    LinearFn,
    LoraAdapter,
    MixedBatch,
    StackedBatch,
    by_row_count,
    merged_linear,
    plan_scope,
    unmerged_linear,
)
from app.lora.composed import Entries
from app.lora.layers import DeltaPlan
from app.model import BaseModel, Rows, TokenBatch

UsedMode = Literal["unmerged", "merged"]
# Rows name adapters by version id (the API resolved names first), so two projects' adapters of
# one name, or two versions of one name, are never confused in a batch.
# A composition's adapter is None until a path needs it (Predictor.adapters).
Loaded = dict[str, tuple[AdapterRecord, LoraAdapter | None]]
_MAX_STACK = 128  # adapters kept stacked for the mixed path
# Padded tokens per text forward on the CPU. Past a few thousand, a forward gets slower per
# token (its activations no longer fit the caches), and a big batch padded to its longest text
# wastes the rest: so texts go through sorted by length, in chunks (bench/embeddings_service.py).
CPU_CHUNK_TOKENS = 1024


class Predictor:
    """Computes predictions on the frozen base with per-row adapters; safe to call from threads."""

    def __init__(self, base: BaseModel, registry: AdapterRegistry, merged_cache_bytes: int) -> None:
        self.base = base
        self.registry = registry
        self.merged = MergedCache(base.module, merged_cache_bytes)
        self.compositions = Compositions(
            registry.load, list(base.linears()), registry.weights.max_bytes
        )
        registry.on_change(self._forget)
        self._stack_lock = threading.Lock()
        self._stack: AdapterStack | None = None
        self._too_big: set[str] = set()  # versions whose merged copy the budget cannot hold

    def is_merged(self, version: str) -> bool:
        return version in self.merged

    def resolve(self, versions: Iterable[str | None], param: str) -> Loaded:
        """The record and weights of every version or composition named (404 for an unknown
        version)."""
        return self.compositions.resolve(dict.fromkeys(v for v in versions if v is not None), param)

    def adapters(self, loaded: Loaded, param: str = "adapters") -> dict[str, LoraAdapter]:
        """Each key's adapter, a composition's concatenated one made now if need be (kept)."""
        load = self.compositions.load
        return {k: a if a is not None else load(k, param)[1] for k, (_, a) in loaded.items()}

    def _forget(self, version: str) -> None:
        """A version no name uses any more: its merged copy, and its compositions', go."""
        self.compositions.forget(version)
        for key in [version, *(k for k in self.merged.held() if contains(k, version))]:
            self.merged.forget(key)

    def predict(
        self, x: Rows, row_adapters: Sequence[str | None], mode: Mode, param: str = "adapters"
    ) -> tuple[Tensor, UsedMode]:
        """(N, in) -> (N, out) for one request alone; `row_adapters[i]` is row i's version."""
        loaded = self.resolve(row_adapters, param)
        used = self.choose(mode, loaded, row_adapters)
        return self.forward(x, row_adapters, loaded, used), used

    def choose(self, mode: Mode, loaded: Loaded, row_adapters: Sequence[str | None]) -> UsedMode:
        """An explicit mode as asked; `auto` by the policy (app.engine.policy), with a copy made
        beforehand (`merges_due`) rather than during the request."""
        if mode != "auto":
            return mode
        merged = len(loaded) == 1 and self.is_merged(next(iter(loaded)))
        base_rows = None in row_adapters
        return (
            "merged" if runs_merged({mode}, len(loaded), base_rows, merged, False) else "unmerged"
        )

    def merges_due(self, backlog: Mapping[str, int], batch_rows: int) -> list[str]:
        """The versions whose merged copy the policy says to make now: those with a full batch
        of rows waiting (`backlog`: rows per version, queued or about to run), made once."""
        return [
            version
            for version, rows in backlog.items()
            if not self.is_merged(version)
            and version not in self._too_big
            and runs_merged({"auto"}, 1, False, False, pays=rows >= batch_rows)
        ]

    def merge_each(self, versions: Iterable[str]) -> None:
        """Merge the versions `merges_due` named, before the batch that made them due runs, so
        that batch can use them; one that cannot load is skipped (its requests fail alone)."""
        for version in versions:
            with contextlib.suppress(ServiceError):
                self.merge(version)

    def merge(self, version: str, param: str = "adapter") -> bool:
        """Make the merged copy of one version; False if the cache cannot keep it."""
        _, adapter = self.compositions.load(version, param)
        with torch.inference_mode():
            self.merged.get_or_merge(version, adapter)
        kept = self.is_merged(version)
        if not kept:
            self._too_big.add(version)
        return kept

    def forward(
        self, x: Rows, row_adapters: Sequence[str | None], loaded: Loaded, used: UsedMode
    ) -> Tensor:
        """The batch's outputs, (N, out) float32 on the CPU."""
        if (
            isinstance(x, TokenBatch)
            and self.base.device.type == "cpu"
            and len(x) > 1
            and len(x) * x.width > CPU_CHUNK_TOKENS
        ):
            return self._by_length(x, row_adapters, loaded, used)
        x = self.base.prepare(x)
        with torch.inference_mode():
            if used == "merged":
                y = self._merged(x, row_adapters, loaded)
            elif not loaded:
                y = self._run(x, None)
            elif len(loaded) == 1 and None not in row_adapters:
                # Every row on one adapter: the plain LoRA term, no stacking or indexing.
                y = self._run(x, unmerged_linear(next(iter(self.adapters(loaded).values()))))
            else:
                y = self._stacked(x, row_adapters, loaded)
            return y.float().cpu()

    def _by_length(
        self, x: TokenBatch, row_adapters: Sequence[str | None], loaded: Loaded, used: UsedMode
    ) -> Tensor:
        """Texts sorted by length, forwarded in chunks of at most CPU_CHUNK_TOKENS padded tokens."""
        lengths = x.mask.sum(dim=1).tolist()
        order = sorted(range(len(x)), key=lengths.__getitem__)
        out = torch.empty(len(x), self.base.output_dim)
        start = 0
        while start < len(order):
            stop = start + 1  # ascending lengths: a chunk's last text is its longest
            while (
                stop < len(order) and (stop + 1 - start) * lengths[order[stop]] <= CPU_CHUNK_TOKENS
            ):
                stop += 1
            rows = order[start:stop]
            names = [row_adapters[i] for i in rows]
            chunk = {n: loaded[n] for n in dict.fromkeys(names) if n is not None}
            out[rows] = self.forward(x[torch.tensor(rows)], names, chunk, used)
            start = stop
        return out

    def _stacked(self, x: Rows, row_adapters: Sequence[str | None], loaded: Loaded) -> Tensor:
        if isinstance(x, TokenBatch):
            return self._segmented(x, row_adapters, loaded)
        parts = {key: parts_of(key) for key in loaded}
        if any(p is not None for p in parts.values()):
            return self._composed(x, row_adapters, parts)
        adapters = self.adapters(loaded)  # plain versions only: loaded already
        stack = self.stack_for(adapters)
        if 2 * len(loaded) < len(stack.keys):
            # Few of the stack's adapters: its padded blocks would be mostly empty slots, so sort
            # the rows by adapter once and give each its plain products on a contiguous view
            # (8 of 64 adapters: 1.25x the base, against 1.33-1.41x stacked; 16 of 64: 1.41-1.49x
            # against 1.8x).
            batch = MixedBatch.build(row_adapters, adapters, x.device)
            return batch.unsort(self._run(batch.sort(x), batch.linear()))
        return self._run(x, StackedBatch.build(row_adapters, stack, x.device).linear())

    def _composed(
        self,
        x: Tensor,
        row_adapters: Sequence[str | None],
        parts: Mapping[str, Parts | None],
    ) -> Tensor:
        """Rows on compositions beside rows on adapters: each (row, adapter, scale) entry's term
        computed with its adapter's other entries, scaled, added into its row."""
        row_parts = [() if key is None else (parts[key] or ((key, 1.0),)) for key in row_adapters]
        entries = Entries.of(row_parts)
        singles = {v: self.compositions.load(v, "adapters")[1] for v in set(entries.keys)}
        stack = self.stack_for(singles)
        if 2 * len(singles) < len(stack.keys):
            # Few of the stack's adapters (see _stacked): the entries' rows sorted by adapter,
            # each adapter's plain products, scaled and added back into their rows.
            batch = MixedBatch.build(entries.keys, singles, x.device)
            add = batch.linear().add
            terms = DeltaPlan(lambda name, x, y: _sorted_add(batch, add, name, x, y))
            return self._run(x, entries.linear(terms, x.device))
        # Stacked: each entry's row gathered straight into its adapter's slot, its scale
        # applied at rank width, its term added into its row.
        return self._run(x, StackedBatch.of_entries(entries, stack, x.device).linear())

    def _segmented(
        self, x: TokenBatch, row_adapters: Sequence[str | None], loaded: Loaded
    ) -> Tensor:
        """Texts sorted by adapter before the forward, so each adapter's tokens are one
        contiguous block in every layer: its LoRA term is two small products on a view, with
        no gather or scatter of activations (sorting token ids is all it costs)."""
        batch = MixedBatch.build(row_adapters, self.adapters(loaded), x.device)
        xs = batch.sort(x)
        width = xs.width
        # Most layers see each token as a row (its text's adapter); a few see one row per text.
        per_token = MixedBatch(None, None, tuple(
            replace(seg, start=seg.start * width, stop=seg.stop * width) for seg in batch.segments
        ))  # fmt: skip
        per_text = MixedBatch(None, None, batch.segments)
        plan = by_row_count({len(xs) * width: per_token.linear, len(xs): per_text.linear})
        return batch.unsort(self._run(xs, plan))

    def stack_for(self, adapters: dict[str, LoraAdapter]) -> AdapterStack:
        """A stack holding this batch's adapters: the last one if it does, else a new one.

        A new stack keeps the last one's adapters too (up to _MAX_STACK), so that traffic over
        a working set of adapters soon finds all of them stacked and stops rebuilding.
        """
        with self._stack_lock:
            stack = self._stack
            if stack is not None and set(adapters) <= stack.keys:
                return stack
            keep: dict[Hashable, LoraAdapter] = {}
            if stack is not None and len(stack.keys | set(adapters)) <= _MAX_STACK:
                keep = dict(stack.modules)
            keep.update(adapters)
            self._stack = AdapterStack.build(keep)
            return self._stack

    def _merged(self, x: Rows, row_adapters: Sequence[str | None], loaded: Loaded) -> Tensor:
        """Each adapter's rows through that adapter's merged weights."""
        batch = MixedBatch.build(row_adapters, self.adapters(loaded), x.device)
        xs = batch.sort(x)  # (N, in), rows grouped by adapter
        parts = []
        for seg in batch.segments:
            rows = xs[seg.start : seg.stop]
            if seg.key is None or seg.adapter is None:
                parts.append(self._run(rows, None))
                continue
            weights = self.merged.get_or_merge(seg.key, seg.adapter)
            parts.append(self._run(rows, merged_linear(weights)))
        return batch.unsort(torch.cat(parts))

    def _run(self, x: Rows, plan: LinearFn | None) -> Tensor:
        """One forward of the base with `plan` at its wrapped layers (None: the base alone)."""
        with plan_scope(plan):
            return self.base.run(x)


def _sorted_add(
    batch: MixedBatch, add: Callable[..., None], name: str, x: Tensor, y: Tensor
) -> None:
    """A MixedBatch's terms for rows in the caller's order: sorted in, sorted back."""
    out = batch.sort(y.new_zeros(y.shape))
    add(name, batch.sort(x), out)
    y.add_(batch.unsort(out))
