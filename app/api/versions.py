"""Adapter names to versions, as every route resolves them when a request arrives."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.concurrency import run_in_threadpool

from app.adapters import AdapterRegistry
from app.adapters.versions import split_ref
from app.api.schemas import LoraEntry
from app.engine.compositions import composition_key
from app.engine.inputs import RowSpec
from app.errors import InvalidInput


async def versions_of(
    registry: AdapterRegistry, names: Sequence[str | None], param: str, project: str
) -> list[str | None]:
    """Each name's current version (or name@version's, None for the base): 404 for an unknown
    name, 409 for a broken one, `param` naming the field. Names not cached are read from the
    database on a worker thread, never on the event loop."""
    if registry.needs_lookup(names, project):
        return await run_in_threadpool(registry.versions_for, names, param, project)
    return registry.versions_for(names, param, project)


async def row_versions(
    registry: AdapterRegistry,
    specs: Sequence[RowSpec],
    param: str,
    project: str,
    max_entries: int,
) -> list[str | None]:
    """Each row's version, composition key (app.engine.compositions) or None, every name
    resolved now; a composition holds at most `max_entries` entries."""
    unique: dict[str, None] = {}  # the names, in order, once each
    for spec in specs:
        if isinstance(spec, list):
            if len(spec) > max_entries:
                raise InvalidInput(
                    f"a composition of {len(spec)} adapters; at most {max_entries} "
                    "(MAX_ADAPTERS_PER_REQUEST)",
                    param,
                )
            unique.update((n, None) for n, _ in spec)
        elif spec is not None:
            unique[spec] = None
    names = list(unique)
    resolved = await versions_of(registry, names, param, project)
    found = {n: v for n, v in zip(names, resolved, strict=True) if v is not None}  # every one
    out: list[str | None] = []
    for spec in specs:
        if spec is None or isinstance(spec, str):
            out.append(None if spec is None else found[spec])
        else:
            out.append(composition_key((found[n], scale) for n, scale in spec))
    return out


def lora_spec(
    lora: Sequence[LoraEntry], model: str | None, base_name: str
) -> list[tuple[str, float]]:
    """Our `lora` extension on the OpenAI routes: a composition, with `model` naming the base
    (or left out); a 422 naming `lora` otherwise or for a malformed name."""
    if model not in (None, base_name):
        raise InvalidInput(
            f"`lora` gives the composition; with it, `model` must be the base model's name "
            f"({base_name!r})",
            "lora",
        )
    for entry in lora:
        split_ref(entry.name, "lora")
    return [(e.name, e.scale) for e in lora]
