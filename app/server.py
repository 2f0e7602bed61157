"""Run the service under uvicorn with the connection limits an ASGI app cannot set itself.

An ASGI app only sees a request once its headers are in, so a client that connects and sends
nothing, or trickles its headers a byte at a time, would hold a connection for ever. This
protocol closes such connections: headers must be complete within HEADER_TIMEOUT_S of the
connection opening (or of the request's first byte on a kept-alive one), a body the app never
read is not waited for, and connections past MAX_CONNECTIONS are closed at once. Body read time
and requests in flight are bounded inside the app (app.api.limits), so they hold for plain
`uvicorn app.main:app` too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.errors import envelope
from app.settings import Settings

log = logging.getLogger("app.server")


def _timeout_response() -> bytes:
    body = orjson.dumps(envelope("request_timeout", "the request's headers did not arrive in time"))
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a connection cap."""

    header_timeout_s: float = 10.0
    max_connections: int = 1024
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("closing a new connection: %d are open", len(self.connections) - 1)
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Answered before its body was all in (401, 413, ...): the rest is not worth waiting for.
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self.transport.close()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_timeout_response())
        self.transport.close()


def protocol_for(settings: Settings) -> type[GuardedHttpProtocol]:
    """The protocol class with this service's limits."""
    limits = {
        "header_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
    }
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), limits)


class CannotListen(OSError):
    """The address to serve on is taken, or is not this machine's."""


def check_listen(host: str, port: int) -> None:
    """Bind host:port as uvicorn will (every address it resolves to), then let go: a taken port
    is found in a moment, not after the base model has loaded (up to minutes)."""
    where = f"{host}:{port}"
    try:
        # asyncio's create_server, which uvicorn calls, reads "" as every interface.
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {where}: {exc.strerror}") from None
    for family, kind, proto, _, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio sets it
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                taken = exc.errno == errno.EADDRINUSE
                hint = ": another process listens there; choose another --port" if taken else ""
                raise CannotListen(
                    f"cannot listen on {where}: {exc.strerror or exc}{hint}"
                ) from None


def run(settings: Settings) -> None:
    """Serve on settings.host:settings.port until SIGINT/SIGTERM (requests in flight finish)."""
    from app.main import create_app

    check_listen(settings.host, settings.port)  # before the lifespan loads the model

    app = create_app(settings)  # configures the JSON logs, uvicorn's loggers included
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_for(settings),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        access_log=False,  # RequestContext writes one JSON line per request
        log_config=None,
        server_header=False,
    )
