"""A step's rows: which tokens of which running sequences go into the next forward.

Rows are flattened: first one row per decoding sequence (one token left to compute: the last
it sampled), then chunks of the sequences with more left (prompts, or sequences computed again
after a preemption), within the step's prefill budget. A sequence's next token is sampled
from its last row once every token it has is computed. Before the rows are made, every row
has its block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.families.decoder.generate.cache import BlockTable, KVCache
from app.families.decoder.generate.sequence import Sequence


def table(seq: Sequence) -> BlockTable:
    """The blocks of a running sequence (it always has them)."""
    assert seq.table is not None
    return seq.table


def left(seq: Sequence) -> int:
    """Tokens of a running sequence whose keys and values are not in the cache yet."""
    return len(seq.tokens) - table(seq).computed


@dataclass
class StepRows:
    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)  # each row's adapter version
    tables: list[list[int]] = field(default_factory=list)  # each row's sequence's blocks
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # prefill (start, stop, pos)
    sampled: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, its row)
    computed: list[tuple[Sequence, int]] = field(default_factory=list)  # tokens computed after

    def add(self, seq: Sequence, start: int, n: int) -> None:
        """Tokens start..start+n of `seq` as rows."""
        self.ids += seq.tokens[start : start + n]
        self.positions += range(start, start + n)
        self.keys += [seq.version] * n
        self.tables += [table(seq).blocks] * n
        self.computed.append((seq, start + n))
        if start + n == len(seq.tokens):
            self.sampled.append((seq, len(self.ids) - 1))


def step_rows(running: list[Sequence], prefill_budget: int) -> StepRows:
    rows = StepRows()
    for seq in running:
        if left(seq) == 1:
            rows.add(seq, len(seq.tokens) - 1, 1)
    budget = max(prefill_budget, 1)
    for seq in running:
        computed, n = table(seq).computed, min(budget, left(seq))
        if left(seq) <= 1 or budget <= 0:
            continue
        rows.spans.append((len(rows.ids), len(rows.ids) + n, computed))
        rows.add(seq, computed, n)
        budget -= n
    return rows


def open_blocks(cache: KVCache, seq: Sequence, spare: bool) -> bool:
    """Blocks for all of `seq`'s tokens (what the prefix cache holds is found, not taken), with
    one block to spare when `spare` (others run, and will want blocks); False, and none taken,
    when too few are free."""
    found = cache.open(seq.tokens, seq.version)
    need = cache.blocks_for(len(seq.tokens)) - len(found.blocks) + int(spare)
    if need > cache.free_blocks or not cache.grow(found, len(seq.tokens)):
        cache.close(found)
        return False
    seq.table = found
    return True


def blocks_for_decode(
    cache: KVCache, running: list[Sequence], preempt: Callable[[Sequence], None]
) -> None:
    """Each decoding sequence's next token gets its block; when none is free, the sequence
    that joined last is preempted (vLLM's recompute policy; `preempt` takes it out of
    `running`), never an out-of-memory."""
    for seq in list(running):
        if seq.table is None or left(seq) != 1:
            continue
        while not cache.grow(seq.table, len(seq.tokens)):
            victim = running[-1]
            preempt(victim)
            if victim is seq:
                break
