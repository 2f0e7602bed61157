"""The paged KV cache and its blocks: memory by the block, prefix keys, LRU reuse, the budget."""

from __future__ import annotations

import torch

from app.families.decoder.generate.blocks import BlockPool, block_keys
from app.families.decoder.generate.cache import BlockTable, KVCache

LAYERS, KV_HEADS, HEAD_DIM, BLOCK = 2, 2, 8, 4
BYTES_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * 4  # K and V of every layer, float32


def _cache(blocks: int, caching: bool = True) -> KVCache:
    budget = blocks * BLOCK * BYTES_PER_TOKEN
    cpu = torch.device("cpu")
    return KVCache(LAYERS, KV_HEADS, HEAD_DIM, torch.float32, cpu, budget, BLOCK, 4096, caching)


def test_a_sequence_holds_its_tokens_rounded_up_to_a_block() -> None:
    cache = _cache(16)
    table = BlockTable(None)
    assert cache.grow(table, 1) and cache.nbytes == BLOCK * BYTES_PER_TOKEN
    assert cache.grow(table, 4) and len(table.blocks) == 1
    assert cache.grow(table, 5) and len(table.blocks) == 2
    assert cache.nbytes == 2 * BLOCK * BYTES_PER_TOKEN
    cache.close(table)
    assert cache.nbytes == 0 and cache.free_blocks == 15  # block 0 is the padding


def test_the_budget_bounds_the_blocks_and_a_refused_growth_changes_nothing() -> None:
    cache = _cache(4)  # blocks 1..3 usable
    table = BlockTable(None)
    assert cache.capacity_tokens() == 3 * BLOCK
    assert cache.pool.count * BLOCK * BYTES_PER_TOKEN <= cache.budget_bytes
    assert not cache.grow(table, 4 * BLOCK) and table.blocks == []
    assert cache.grow(table, 3 * BLOCK) and cache.free_blocks == 0


def test_block_keys_chain_the_tokens_before_and_the_version() -> None:
    a = block_keys(list(range(10)), "v1", BLOCK)
    assert len(a) == 2  # full blocks only
    assert block_keys(list(range(10)), "v1", BLOCK) == a
    assert block_keys(list(range(10)), "v2", BLOCK)[0] != a[0]
    assert block_keys(list(range(10)), None, BLOCK)[0] != a[0]
    changed = [99, *range(1, 10)]  # a change in the first block changes every later key
    assert block_keys(changed, "v1", BLOCK)[1] != a[1]
    assert block_keys(list(range(10)), "v1", BLOCK, a[:1]) == a  # extended from known keys


def test_a_prompt_that_starts_the_same_way_reuses_the_full_blocks() -> None:
    cache = _cache(16)
    tokens = list(range(11))  # two full blocks and three tokens
    first = cache.open(tokens, "v1")
    assert first.computed == 0 and cache.grow(first, len(tokens))
    cache.computed(first, tokens, len(tokens))
    again = cache.open([*tokens[:9], 50, 51], "v1")
    assert again.blocks == first.blocks[:2] and again.computed == 2 * BLOCK
    assert cache.pool.queries == 22 and cache.pool.hits == 8
    # Another version, or the base, never finds them.
    assert cache.open(tokens, "v2").blocks == [] and cache.open(tokens, None).blocks == []
    # At least one token is left to compute: its logits give the next token.
    exact = cache.open(tokens[:8], "v1")
    assert exact.computed == BLOCK


def test_released_cached_blocks_are_reused_in_least_recently_used_order() -> None:
    cache = _cache(5)  # 4 usable blocks
    old, new = list(range(5)), list(range(100, 105))
    for tokens in (old, new):
        table = cache.open(tokens, None)
        assert cache.grow(table, len(tokens))
        cache.computed(table, tokens, len(tokens))
        cache.close(table)
    assert cache.free_blocks == 4 and cache.nbytes == 0  # cached, yet free to take
    taker = BlockTable(None)
    assert cache.grow(taker, 3 * BLOCK)  # 2 never-used blocks, then the LRU cached one (old's)
    assert cache.open(old, None).blocks == []
    assert len(cache.open(new, None).blocks) == 1


def test_a_block_taken_again_is_zeroed_before_the_next_step() -> None:
    cache = _cache(3)
    table = BlockTable(None)
    assert cache.grow(table, BLOCK)
    cache.prepare()
    (block,) = table.blocks
    cache.k[0][block] = float("nan")
    cache.close(table)
    assert cache.grow(table, BLOCK) and table.blocks == [block]
    cache.prepare()
    assert torch.equal(cache.k[0][block], torch.zeros_like(cache.k[0][block]))
    assert torch.equal(cache.k[0][0], torch.zeros_like(cache.k[0][0]))  # the padding block


def test_the_pool_without_caching_finds_nothing() -> None:
    pool = BlockPool(8, caching=False)
    block = pool.take()
    pool.cache(block, b"key")
    assert pool.lookup([b"key"]) == []
    pool.release([block])
    assert pool.free == 7
