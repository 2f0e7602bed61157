"""Saving a composition of adapters as a new adapter: POST /v1/adapters/compose.

The sources are resolved in the caller's project (a name, or name@version), a version named
twice counts once with its scales added, and the combined adapter (app.lora.compose) is written
as a new immutable version whose metadata records its sources and method. `plan` checks a
request and resolves it (every 4xx happens there); `write` makes and registers the adapter, at
once for a small composition or later in a job (app.training.worker) for a large one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import Connection

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


@dataclass(frozen=True)
class Planned:
    """A checked composition: its sources as versions (name, version, summed scale)."""

    name: str
    sources: list[tuple[str, str, float]]
    method: Method
    rank: int | None
    density: float | None
    seed: int
    overwrite: bool
    project: str
    flops: float  # what making it costs, roughly (see `cost`)

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Planned:
        return cls(**{**data, "sources": [tuple(s) for s in data["sources"]]})


def plan(
    registry: AdapterRegistry,
    request: Composition,
    overwrite: bool = False,
    project: str = DEFAULT_PROJECT,
) -> Planned:
    """Every check a composition can fail (422, 404, 409): sources, arguments, rank, room."""
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
    except CompositionError as exc:
        raise InvalidInput(str(exc), "sources") from exc
    if rank > registry.max_rank:
        raise InvalidInput(
            f"the composition's rank would be {rank}, over the limit of {registry.max_rank}",
            "rank" if svd else "sources",
        )
    registry.check_room(request.name, project, overwrite)
    targets = {n for adapter, _ in loaded for n in adapter.modules}
    dims = [registry.base.linears[n] for n in targets if n in registry.base.linears]
    sources = [(r.name, v, scales[v]) for v, r in records.items()]
    return Planned(
        request.name, sources, request.method, request.rank, request.density, request.seed,
        overwrite, project, cost(request.method, dims, len(sources)),
    )  # fmt: skip


def cost(method: Method, dims: Sequence[tuple[int, int]], n_sources: int) -> float:
    """Rough floating-point operations: cat and linear only stack or add the sources' factors;
    the svd methods form each layer's full update (per source when pruned) and decompose it."""
    if method in ("cat", "linear"):
        return 0.0
    per_layer = [i * o * min(i, o) + i * o * n_sources for i, o in dims]
    return float(sum(per_layer))


def write(
    registry: AdapterRegistry,
    planned: Planned,
    within: Callable[[Connection], None] | None = None,
) -> AdapterRecord:
    """Make the planned composition and register it (`within`: run in the registering
    transaction, as a job's worker needs)."""
    loaded = [(registry.load(v, "sources")[1], scale) for _, v, scale in planned.sources]
    try:
        adapter = compose(
            loaded, planned.method, list(registry.base.linears), planned.rank, planned.density,
            planned.seed,
        )  # fmt: skip
    except CompositionError as exc:
        raise InvalidInput(str(exc), "sources") from exc
    sources = [{"name": n, "version": v, "scale": s} for n, v, s in planned.sources]
    metadata = {
        "sources": json.dumps(sources),
        "method": planned.method,
        **({"rank": str(planned.rank)} if planned.rank is not None else {}),
        **({"density": str(planned.density)} if planned.density is not None else {}),
        **({"seed": str(planned.seed)} if planned.method == "dare_ties_svd" else {}),
    }
    return registry.add(
        planned.name, adapter, source="composition", overwrite=planned.overwrite,
        metadata=metadata, project=planned.project, within=within,
    )  # fmt: skip


def save_composition(
    registry: AdapterRegistry,
    request: Composition,
    overwrite: bool = False,
    project: str = DEFAULT_PROJECT,
) -> AdapterRecord:
    """The composition, written as a version of `request.name` (source `composition`)."""
    return write(registry, plan(registry, request, overwrite, project))
