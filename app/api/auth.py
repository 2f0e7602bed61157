"""Bearer keys: admin keys may do everything, API keys may read and predict."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Literal

from fastapi import Depends, Request

from app.errors import Forbidden, Unauthorized
from app.settings import Settings

Role = Literal["admin", "api"]


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


def require(role: Role) -> Callable[[Request], None]:
    """A dependency: the request needs a key of `role` (an admin key does for both)."""

    def check(request: Request) -> None:
        settings: Settings = request.app.state.settings
        if not settings.auth_enabled:
            return
        if role_of(settings, request.headers.get("authorization")) == "api" and role == "admin":
            raise Forbidden("this needs an admin key; the key given may only read and predict")

    return check


ADMIN = [Depends(require("admin"))]
READ = [Depends(require("api"))]
