"""Saving a composition of adapters as a new adapter: POST /v1/adapters/compose.

The sources are resolved in the caller's project (a name, or name@version), a version named
twice counts once with its scales added, and the combined adapter (app.lora.compose) is written
as a new immutable version whose metadata records its sources and method.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from app.adapters.records import AdapterRecord
from app.adapters.registry import AdapterRegistry
from app.errors import InvalidInput
from app.lora.compose import CompositionError, Method, compose, result_rank
from app.state.tables import DEFAULT_PROJECT


@dataclass(frozen=True)
class Composition:
    """What a compose request asks for, its values already of the right types."""

    name: str
    sources: Sequence[tuple[str, float]]  # (name or name@version, scale)
    method: Method
    rank: int | None = None
    density: float | None = None
    seed: int = 0


def save_composition(
    registry: AdapterRegistry,
    request: Composition,
    overwrite: bool = False,
    project: str = DEFAULT_PROJECT,
) -> AdapterRecord:
    """The composition, written as a version of `request.name` (source `composition`)."""
    svd = request.method.endswith("svd")
    if request.rank is not None and not svd:
        raise InvalidInput(f"`rank` applies to the svd methods, not to `{request.method}`", "rank")
    pruned = request.method in ("ties_svd", "dare_ties_svd")
    if request.density is not None and not pruned:
        raise InvalidInput(
            f"`density` applies to ties_svd and dare_ties_svd, not to `{request.method}`",
            "density",
        )
    if pruned and request.density is None:
        raise InvalidInput(f"`{request.method}` needs a `density` in (0, 1]", "density")
    scales: dict[str, float] = {}
    records: dict[str, AdapterRecord] = {}
    for i, (ref, scale) in enumerate(request.sources):
        record = registry.resolve(ref, f"sources.{i}.name", project)
        records[record.version] = record
        scales[record.version] = scales.get(record.version, 0.0) + scale
    loaded = [(registry.load(v, "sources")[1], scales[v]) for v in records]
    try:
        rank = result_rank(loaded, request.method, request.rank)
        if rank > registry.max_rank:
            raise InvalidInput(
                f"the composition's rank would be {rank}, over the limit of {registry.max_rank}",
                "rank" if svd else "sources",
            )
        adapter = compose(
            loaded,
            request.method,
            list(registry.base.linears),
            request.rank,
            request.density,
            request.seed,
        )
    except CompositionError as exc:
        raise InvalidInput(str(exc), "sources") from exc
    sources = [{"name": r.name, "version": v, "scale": scales[v]} for v, r in records.items()]
    metadata = {
        "sources": json.dumps(sources),
        "method": request.method,
        **({"rank": str(request.rank)} if request.rank is not None else {}),
        **({"density": str(request.density)} if request.density is not None else {}),
        **({"seed": str(request.seed)} if request.method == "dare_ties_svd" else {}),
    }
    return registry.add(
        request.name, adapter, source="composition", overwrite=overwrite, metadata=metadata,
        project=project,
    )  # fmt: skip
