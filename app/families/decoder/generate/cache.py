"""The paged KV cache: every layer's keys and values in fixed-size blocks, bounded in bytes.

Each layer holds K and V as (blocks, block_tokens, kv_heads, head_dim): a token's keys are one
contiguous row, so a step writes all its rows with one `index_copy_` per layer, and a sequence's
keys are gathered from its block table. A sequence takes a block when its tokens fill the last
one, so the cache holds each sequence's own tokens rounded up to a block, never a slot sized
for the longest; full blocks are shared between sequences with the same start (app.families.decoder.generate.
blocks). KV_CACHE_BYTES bounds the blocks (block 0, the padding, included).

The tensors are made when the first sequence arrives (empty: the OS gives pages as blocks are
first written) and each block is zeroed as it is taken, so a padded or stale position is never
NaN (a masked position's weight is 0, and 0 * NaN would spoil the row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.families.decoder.generate.blocks import BlockPool, block_keys
from app.lora.gather import as_bits, take_rows


@dataclass(eq=False)
class BlockTable:
    """One sequence's blocks, and how many of its tokens' keys and values they hold."""

    version: str | None
    blocks: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose keys and values are in the blocks
    cached: int = 0  # full blocks already offered to the prefix cache
    keys: list[bytes] = field(default_factory=list)  # the full blocks' keys, as far as known


class KVCache:
    """Keys and values of the running sequences; used by the engine's thread alone."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        budget_bytes: int,
        block_tokens: int,
        max_length: int,
        prefix_caching: bool = True,
    ) -> None:
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.budget_bytes = budget_bytes
        self.block_tokens = block_tokens
        self.max_length = max_length
        element = torch.empty((), dtype=dtype).element_size()
        self.bytes_per_token = 2 * layers * kv_heads * head_dim * element
        self.block_bytes = self.bytes_per_token * block_tokens
        self.pool = BlockPool(max(budget_bytes // self.block_bytes, 1), prefix_caching)
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self._fresh: list[int] = []  # blocks taken since the last step: zeroed before it
        self._scratch: dict[int, Tensor] = {}  # gather buffers, reused by every layer

    # -- sizes, for admission and the metrics ------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks held by sequences (what the running batch uses)."""
        return self.pool.used * self.block_bytes

    @property
    def free_blocks(self) -> int:
        return self.pool.free

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def capacity_tokens(self) -> int:
        """The longest sequence the budget could ever hold alone."""
        return min((self.pool.count - 1) * self.block_tokens, self.max_length)

    # -- a sequence's blocks ----------------------------------------------------------------

    def open(self, tokens: list[int], version: str | None) -> BlockTable:
        """A table holding the cached blocks of the longest cached start of `tokens` (at least
        one token is left to compute: its logits give the next token)."""
        keys: list[bytes] = []
        if self.pool.caching:
            keys = block_keys(tokens[: len(tokens) - 1], version, self.block_tokens)
        table = BlockTable(version, keys=keys)
        table.blocks = self.pool.lookup(keys)
        table.computed = table.cached = len(table.blocks)
        table.computed *= self.block_tokens
        self.pool.count_query(len(tokens), table.computed)
        return table

    def grow(self, table: BlockTable, tokens: int) -> bool:
        """Blocks for `tokens` tokens in all; False (and no change) when too few are free."""
        need = self.blocks_for(tokens) - len(table.blocks)
        if need <= 0:
            return True
        if need > self.pool.free:
            return False
        for _ in range(need):
            block = self.pool.take()
            table.blocks.append(block)
            self._fresh.append(block)
        return True

    def close(self, table: BlockTable) -> None:
        """The sequence is done (or preempted): its blocks go back, the cached ones stay cached."""
        self.pool.release(table.blocks)
        table.blocks, table.computed, table.cached, table.keys = [], 0, 0, []

    def computed(self, table: BlockTable, tokens: list[int], upto: int) -> None:
        """`tokens[:upto]` now have their keys and values in the table's blocks; full blocks
        become findable by later sequences."""
        table.computed = upto
        full = upto // self.block_tokens
        if full > table.cached and self.pool.caching:
            wanted = tokens[: full * self.block_tokens]
            table.keys = block_keys(wanted, table.version, self.block_tokens, table.keys)
            for i in range(table.cached, full):
                self.pool.cache(table.blocks[i], table.keys[i])
        table.cached = full

    # -- the tensors -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Before a step: the tensors exist, and blocks taken since the last step are zero."""
        if not self.k:
            shape = (self.pool.count, self.block_tokens, self.kv_heads, self.head_dim)
            self.k = [self._empty(shape) for _ in range(self.layers)]
            self.v = [self._empty(shape) for _ in range(self.layers)]
            self._fresh.append(0)  # the padding block is read (masked) by every gather
        if self._fresh:
            index = torch.tensor(self._fresh, dtype=torch.long, device=self.device)
            for tensors in (self.k, self.v):
                for t in tensors:
                    # As int16: index_fill_ is slow on 16-bit floats too (app.lora.gather).
                    as_bits(t.view(t.shape[0], -1)).index_fill_(0, index, 0)
            self._fresh = []

    def gather(self, tensor: Tensor, blocks: Tensor, buffer: int) -> Tensor:
        """`tensor`'s `blocks` (one layer's K or V), copied into scratch buffer `buffer`.

        The buffers live as long as the cache, so a step's gathers (two per layer) reuse the
        same memory: a fresh megabyte-sized tensor per gather is a fresh mapping from the OS,
        and its page faults cost more than the copy."""
        shape = (len(blocks), *tensor.shape[1:])
        numel = shape[0] * tensor[0].numel()
        scratch = self._scratch.get(buffer)
        if scratch is None or scratch.numel() < numel:
            scratch = self._scratch[buffer] = self._empty((numel,))
        return take_rows(tensor, blocks, out=scratch[:numel].view(shape))

    def _empty(self, shape: tuple[int, ...]) -> Tensor:
        return torch.empty(shape, dtype=self.dtype, device=self.device)
