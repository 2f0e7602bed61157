"""Bearer keys: admin keys may do everything in their project, API keys may read and predict,
super-admin keys (a setting) also manage projects and their keys.

Who is calling is settled by the `Authenticate` middleware, before any route reads a body, so a
request without a valid key costs the server nothing but its headers. What the key may do is a
dependency of each route (`ADMIN`, `READ`), which also puts the bearer scheme into OpenAPI.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.console import is_console_path
from app.api.errors import error_response
from app.errors import Forbidden, Unauthorized
from app.settings import Settings
from app.state.tables import DEFAULT_PROJECT

Role = Literal["super", "admin", "api"]
_RANK = {"api": 0, "admin": 1, "super": 2}
# Everything else needs a key when auth is on: the API, /metrics, and the OpenAPI docs too. The
# console's files are public too (app.api.console): they hold no data.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
_bearer = HTTPBearer(auto_error=False, description="a super-admin key, an admin key or an API key")


def _matches(token: bytes, keys: list[bytes]) -> bool:
    # Compare against every key, without stopping early, so timing says nothing about which.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token, key)
    return found


def bearer_token(authorization: str | None) -> str:
    """The key of an `Authorization: Bearer KEY` header; 401 if there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an API key as `Authorization: Bearer KEY`")
    return token.strip()


def settings_role(settings: Settings, token: str) -> Role | None:
    """The role of a key the settings name (all of the default project), else None."""
    raw = token.encode()
    for role, keys in (
        ("super", settings.super_admin_keys),
        ("admin", settings.admin_keys),
        ("api", settings.api_keys),
    ):
        if _matches(raw, [k.get_secret_value().encode() for k in keys]):
            return role  # type: ignore[return-value]
    return None


async def identify(scope: Scope, settings: Settings, token: str) -> tuple[Role, str]:
    """(role, project) of a key from the settings or from a project's keys; 401 if unknown."""
    role = settings_role(settings, token)
    if role is not None:
        return role, DEFAULT_PROJECT
    services = getattr(scope["app"].state, "services", None) if "app" in scope else None
    if services is not None:
        found = await run_in_threadpool(services.projects.lookup, token)
        if found is not None:
            project, key_role = found
            return key_role, project
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
            or is_console_path(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            token = bearer_token(header.decode("latin-1") if header else None)
            role, project = await identify(scope, self.settings, token)
        except Unauthorized as exc:
            response = error_response(
                exc.status, exc.code, exc.message, None, exc.error_type, exc.headers
            )
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["role"], state["project"] = role, project
        await self.app(scope, receive, send)


def require(role: Role) -> Callable[..., Awaitable[None]]:
    """A dependency: the request needs a key of `role` or above (super > admin > api).

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
        held: Role | None = getattr(request.state, "role", None)
        if held is None:  # only public paths pass the middleware without a role
            held = settings_role(settings, bearer_token(request.headers.get("authorization")))
            if held is None:
                raise Unauthorized("the API key is not valid")
        if _RANK[held] < _RANK[role]:
            if role == "super":
                raise Forbidden("this needs a super-admin key (LORASERVE_SUPER_ADMIN_KEYS)")
            raise Forbidden("this needs an admin key; the key given may only read and predict")

    return check


SUPER = [Depends(require("super"))]
ADMIN = [Depends(require("admin"))]
READ = [Depends(require("api"))]
