"""Prediction inputs checked before any model work: shape, finiteness, row count, names.

These run on the event loop, so they use numpy: a torch op on a big tensor there would start an
OpenMP team on that thread, and slow the compute thread's small ops (app/engine/compute.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from app.adapters.versions import split_ref
from app.errors import InvalidInput


def check_rows(x: Tensor, input_dim: int, max_rows: int) -> Tensor:
    """An (N, input_dim) tensor of finite values with 1 <= N <= max_rows."""
    shape = f"(N, {input_dim}) with 1 <= N <= {max_rows}"
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != input_dim:
        raise InvalidInput(f"inputs must have shape {shape}, got {tuple(x.shape)}", "inputs")
    if x.shape[0] > max_rows:
        raise InvalidInput(f"inputs has {x.shape[0]} rows; must have shape {shape}", "inputs")
    finite = np.isfinite(x.numpy()).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidInput(
            f"inputs row {row} holds NaN, inf or a value beyond float32 (|x| > 3.4e38); "
            "values must be finite float32",
            "inputs",
        )
    return x


def first_non_finite_rows(outputs: Tensor) -> list[int]:
    """Rows of a float32 CPU result holding inf or NaN (empty when all are finite)."""
    finite = np.isfinite(outputs.numpy()).all(axis=1)
    return [] if finite.all() else np.flatnonzero(~finite).tolist()


# What a request names for a row: an adapter (`name` or `name@version`), a composition of
# (name, scale) pairs, or None for the base.
RowSpec = str | list[tuple[str, float]] | None


def row_adapters(
    adapter: RowSpec, adapters: Sequence[RowSpec] | None, n_rows: int
) -> tuple[list[RowSpec], str]:
    """What each row names, and the field it came from."""
    if adapter is not None and adapters is not None:
        raise InvalidInput("give either `adapter` or `adapters`, not both", "adapters")
    if adapters is None:
        _check(adapter, "adapter")
        return [adapter] * n_rows, "adapter"
    if len(adapters) != n_rows:
        raise InvalidInput(
            f"adapters has {len(adapters)} entries; it needs one per row ({n_rows})", "adapters"
        )
    for spec in adapters:
        _check(spec, "adapters")
    return list(adapters), "adapters"


def _check(spec: RowSpec, param: str) -> None:
    for name in [spec] if isinstance(spec, str) else [n for n, _ in spec or []]:
        split_ref(name, param)


def names_in(spec: RowSpec) -> list[str]:
    """The adapter names a row's spec holds (none for the base)."""
    if spec is None:
        return []
    return [spec] if isinstance(spec, str) else [n for n, _ in spec]
