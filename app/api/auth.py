"""Bearer keys: admin keys may do everything, API keys may read and predict.

Who is calling is settled by the `Authenticate` middleware, before any route reads a body, so a
request without a valid key costs the server nothing but its headers. What the key may do is a
dependency of each route (`ADMIN`, `READ`), which also puts the bearer scheme into OpenAPI.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import Forbidden, Unauthorized
from app.settings import Settings

Role = Literal["admin", "api"]
# Everything else needs a key when auth is on: the API, /metrics, and the OpenAPI docs too.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
_bearer = HTTPBearer(auto_error=False, description="an admin key or an API key")


def _matches(token: bytes, keys: list[bytes]) -> bool:
    # Compare against every key, without stopping early, so timing says nothing about which.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token, key)
    return found


def role_of(settings: Settings, authorization: str | None) -> Role:
    """The role a request's `Authorization: Bearer KEY` header carries; 401 if none."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an API key as `Authorization: Bearer KEY`")
    raw = token.strip().encode()
    if _matches(raw, [k.get_secret_value().encode() for k in settings.admin_keys]):
        return "admin"
    if _matches(raw, [k.get_secret_value().encode() for k in settings.api_keys]):
        return "api"
    raise Unauthorized("the API key is not valid")


class Authenticate:
    """401 before anything else happens when auth is on and the key is missing or unknown."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.settings.auth_enabled
            or scope["path"] in PUBLIC_PATHS
        ):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            role = role_of(self.settings, header.decode("latin-1") if header else None)
        except Unauthorized as exc:
            response = error_response(
                exc.status, exc.code, exc.message, None, exc.error_type, exc.headers
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["role"] = role
        await self.app(scope, receive, send)


def require(role: Role) -> Callable[..., Awaitable[None]]:
    """A dependency: the request needs a key of `role` (an admin key does for both).

    OpenAPI 3.1 lets a bearer requirement name roles, so the schema says which key each
    operation needs: `[{"HTTPBearer": ["admin"]}]` or `[{"HTTPBearer": ["api"]}]`.
    """

    async def check(  # async: a plain `def` dependency costs every request a thread hop
        request: Request,
        _: HTTPAuthorizationCredentials | None = Security(_bearer, scopes=[role]),  # noqa: B008
    ) -> None:
        settings: Settings = request.app.state.settings
        if not settings.auth_enabled:
            return
        held = getattr(request.state, "role", None) or role_of(
            settings, request.headers.get("authorization")
        )
        if held == "api" and role == "admin":
            raise Forbidden("this needs an admin key; the key given may only read and predict")

    return check


ADMIN = [Depends(require("admin"))]
READ = [Depends(require("api"))]
