"""Query parameters are parsed strictly: one a route does not take is an error, never ignored."""

from __future__ import annotations

from collections import Counter

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.errors import InvalidInput, shorten

_declared: dict[int, frozenset[str]] = {}


def _walk(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _walk(sub)
    return names


def _query_names(route: APIRoute) -> frozenset[str]:
    names = _declared.get(id(route))
    if names is None:
        names = _declared[id(route)] = frozenset(_walk(route.dependant))
    return names


async def reject_unknown_query(request: Request) -> None:
    """A global dependency: 422 `unknown_parameter` for a name the route does not declare.
    (`async`: a plain `def` dependency would cost every request a worker-thread hop.)"""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.scope.get("query_string"):
        return
    allowed = _query_names(route)
    counts = Counter(key for key, _ in request.query_params.multi_items())
    for key, count in counts.items():
        if key not in allowed:
            takes = ", ".join(sorted(allowed)) or "none"
            raise UnknownParameter(
                f"unknown query parameter {shorten(key)!r}; this route takes: {takes}", key
            )
        if count > 1:
            raise UnknownParameter(f"query parameter {key!r} is given {count} times", key)


class UnknownParameter(InvalidInput):
    code = "unknown_parameter"
