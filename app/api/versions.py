"""Adapter names to versions, as every route resolves them when a request arrives."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.concurrency import run_in_threadpool

from app.adapters import AdapterRegistry


async def versions_of(
    registry: AdapterRegistry, names: Sequence[str | None], param: str, project: str
) -> list[str | None]:
    """Each name's current version (or name@version's, None for the base): 404 for an unknown
    name, 409 for a broken one, `param` naming the field. Names not cached are read from the
    database on a worker thread, never on the event loop."""
    if registry.needs_lookup(names, project):
        return await run_in_threadpool(registry.versions_for, names, param, project)
    return registry.versions_for(names, param, project)
