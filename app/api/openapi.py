"""The OpenAPI schema says what the middleware does too: who may call, and which errors come."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_DESCRIPTIONS = {
    "401": "no API key, or an unknown one",
    "403": "the key may only read and predict; this needs an admin key",
    "408": "the body did not arrive in time",
    "413": "the body is over this route's limit",
    "422": "invalid input, or a query parameter the route does not take",
    "503": "overloaded or still starting; retry after Retry-After seconds",
}


def _answers(op: dict[str, Any], method: str) -> list[str]:
    roles = {role for need in op.get("security", []) for scopes in need.values() for role in scopes}
    if not roles:  # /healthz, /readyz: open, and answered whatever the load
        return ["422"]
    codes = ["401", "422", "503"]
    if "admin" in roles:
        codes.append("403")
    if method in ("post", "put", "patch"):
        codes += ["408", "413"]
    return codes


def install_openapi(app: FastAPI) -> None:
    """Add the error answers that the guards in front of every route can give."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for ops in spec["paths"].values():
                for method, op in ops.items():
                    for code in _answers(op, method):
                        op["responses"].setdefault(
                            code, {"description": _DESCRIPTIONS[code], "content": _ERROR}
                        )
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
