"""Domain errors. Each carries its HTTP status and stable code; one handler renders them."""

from __future__ import annotations

from typing import ClassVar

_ECHO_CHARS = 64


def shorten(value: object, limit: int = _ECHO_CHARS) -> str:
    """A client's value as it may appear in an error message: at most `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class ServiceError(Exception):
    """Base: `status`, machine `code`, human `message`, and the request field at fault."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    error_type: ClassVar[str] = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = {}


class Unauthorized(ServiceError):
    status = 401
    code = "invalid_api_key"
    error_type = "authentication_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)
        self.headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status = 403
    code = "insufficient_permissions"
    error_type = "permission_error"


class InvalidInput(ServiceError):
    status = 422
    code = "invalid_input"


class InvalidName(ServiceError):
    status = 422
    code = "invalid_name"


class InvalidAdapter(ServiceError):
    status = 422
    code = "invalid_adapter"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class AdapterNotFound(NotFound):
    code = "adapter_not_found"


class AdapterExists(ServiceError):
    status = 409
    code = "adapter_exists"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class TooManyAdapters(ServiceError):
    status = 413
    code = "too_many_adapters"


class TooManyRequests(ServiceError):
    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)
        self.headers = {"Retry-After": "10"}


class ServiceUnavailable(ServiceError):
    """503 with Retry-After: try again shortly."""

    status = 503
    code = "unavailable"
    error_type = "server_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)
        self.headers = {"Retry-After": "1"}


class NotReady(ServiceUnavailable):
    code = "not_ready"

    def __init__(self, message: str = "the service is still starting", param: str | None = None):
        super().__init__(message, param)


class QueueFull(ServiceUnavailable):
    code = "overloaded"


class NameTaken(AdapterExists):
    """The name belongs to an entry of ADAPTERS_DIR that the store did not make (never touched)."""

    code = "name_taken"


class AdapterBroken(ServiceError):
    """The adapter's folder is listed but failed validation: replace or delete it to serve it."""

    status = 409
    code = "adapter_broken"


class MalformedBody(ServiceError):
    """The body cannot be parsed at all (a broken multipart stream, say)."""

    status = 400
    code = "malformed_body"


class ClientGone(ServiceError):
    """The client went away before its answer began (logged as nginx's 499; nobody reads it)."""

    status = 499
    code = "client_closed_request"
