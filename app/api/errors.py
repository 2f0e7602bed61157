"""The one place errors become JSON: the envelope of docs/design.md for every failure."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.errors import ServiceError

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def envelope(
    code: str, message: str, param: str | None = None, error_type: str = "invalid_request_error"
) -> dict[str, Any]:
    """The error envelope, as every answer and every stream's error event carries it."""
    return {"error": {"type": error_type, "code": code, "message": message, "param": param}}


def service_envelope(exc: ServiceError) -> dict[str, Any]:
    return envelope(exc.code, exc.message, exc.param, exc.error_type)


def error_response(
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    error_type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        envelope(code, message, param, error_type), status_code=status, headers=headers
    )


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(
        exc.status, exc.code, exc.message, exc.param, exc.error_type, exc.headers or None
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return error_response(400, "invalid_json", f"the body is not valid JSON: {first['msg']}")
    where = _location(tuple(first.get("loc", ())))
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    # The same code as the services' own InvalidInput: one mistake, one code, whoever finds it.
    return error_response(422, "invalid_input", message, where or None)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
        # FastAPI's answer when json.loads fails other than on syntax (nesting too deep): the
        # same mistake as a syntax error, so the same code as everywhere else.
        code = "invalid_json"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


def internal_error() -> JSONResponse:
    """The answer to a bug: no details leave the process (they are in the log, by request id)."""
    return error_response(500, "internal_error", "internal server error", error_type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    # Unexpected exceptions are caught by RequestContext (app.api.observability), which knows
    # the request id and logs one JSON line; Starlette's own handler would re-raise them.
