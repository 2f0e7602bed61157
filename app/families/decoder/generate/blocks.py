"""The KV cache's blocks: who holds which, and which full blocks can be shared (prefix caching).

The cache is cut into blocks of a fixed number of tokens; a sequence holds a list of them (its
block table), one more each time its tokens fill the last. A full block is also known by a key
that chains the previous block's key, the block's token ids and the adapter version the keys
and values were computed with: a later sequence whose tokens start the same way, on the same
version, reuses those blocks instead of computing them again. Versions are immutable (an
overwrite is a new version, a delete ends the name's versions), so a key can never lead to
another adapter's keys and values, and the base (version None) never reuses an adapter's.

A block nobody holds keeps its contents while it is not needed (it may be hit again) and is
given to a new owner in least-recently-used order. Block 0 is never given out: the block
tables are padded with it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

_ROOT = b"loraserve-kv"


def block_keys(
    tokens: Sequence[int], version: str | None, block_tokens: int, known: Sequence[bytes] = ()
) -> list[bytes]:
    """The keys of every full block of `tokens`, each chained to the one before; `known` are
    the first blocks' keys, already made."""
    keys = list(known)
    previous = keys[-1] if keys else hashlib.blake2b(_ROOT + (version or "").encode()).digest()
    for start in range(len(keys) * block_tokens, len(tokens) - block_tokens + 1, block_tokens):
        data = b"".join(t.to_bytes(4, "little") for t in tokens[start : start + block_tokens])
        previous = hashlib.blake2b(previous + data, digest_size=16).digest()
        keys.append(previous)
    return keys


class BlockPool:
    """Block ids 1..count-1: free, held (with a count of holders) or cached (nobody holds it)."""

    def __init__(self, count: int, caching: bool) -> None:
        self.count = count
        self.caching = caching
        self._free: list[int] = list(range(count - 1, 0, -1))  # popped from the end: 1 first
        self._holders: dict[int, int] = {}
        self._by_key: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached, held by nobody; LRU first
        self.queries = 0  # prompt tokens looked up, and those found (vLLM's prefix cache counts)
        self.hits = 0

    @property
    def used(self) -> int:
        """Blocks held by a sequence."""
        return len(self._holders)

    @property
    def free(self) -> int:
        """Blocks a sequence could take now (free, or cached by nobody)."""
        return len(self._free) + len(self._idle)

    def take(self) -> int:
        """One block for a new owner; the caller checked `free`."""
        if self._free:
            block = self._free.pop()
        else:
            block, _ = self._idle.popitem(last=False)  # the least recently used cached block
            self._by_key.pop(self._key_of.pop(block))
        self._holders[block] = 1
        return block

    def release(self, blocks: Sequence[int]) -> None:
        """A sequence lets go of its blocks: cached ones stay findable until needed."""
        for block in reversed(blocks):  # a table's tail is the least likely to be hit again
            left = self._holders[block] - 1
            if left:
                self._holders[block] = left
                continue
            del self._holders[block]
            if block in self._key_of:
                self._idle[block] = None
            else:
                self._free.append(block)

    def lookup(self, keys: Sequence[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `keys`, now held by the caller too."""
        found: list[int] = []
        if self.caching:
            for key in keys:
                block = self._by_key.get(key)
                if block is None:
                    break
                found.append(block)
        for block in found:
            if block in self._idle:
                del self._idle[block]
                self._holders[block] = 1
            else:
                self._holders[block] += 1
        return found

    def count_query(self, tokens: int, hit: int) -> None:
        self.queries += tokens
        self.hits += hit

    def cache(self, block: int, key: bytes) -> None:
        """A held block is full: later sequences may find it by `key` (the first one kept)."""
        if self.caching and key not in self._by_key and block not in self._key_of:
            self._by_key[key] = block
            self._key_of[block] = key
