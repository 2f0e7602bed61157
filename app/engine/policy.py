"""The one rule for `mode: auto`, used by every engine path: when a batch runs on a merged copy.

A merged copy (W + s·B·A written into a copy of each targeted layer) costs nothing per row, but
making it costs a pass over the layers' weights and memory to keep it. So `auto` takes it only
for a batch that is all one adapter, and only once the copy exists or the work waiting on that
adapter pays for making it: a full batch of rows (predictions, dLoRA's rule) or more than one
sequence (generation). An explicit mode wins: `unmerged` anywhere in a batch keeps it unmerged.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

Mode = Literal["auto", "unmerged", "merged"]


def runs_merged(
    modes: Collection[Mode], adapters: int, base_rows: bool, merged: bool, pays: bool
) -> bool:
    """Whether a batch runs on its adapter's merged copy.

    `modes`: what its requests asked for; `adapters`: how many distinct adapters its rows use;
    `base_rows`: whether some rows use none; `merged`: whether the copy exists; `pays`: whether
    the work on that adapter is worth making the copy.
    """
    if adapters != 1 or base_rows or "unmerged" in modes:
        return False
    return "merged" in modes or merged or pays
