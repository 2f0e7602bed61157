"""The web console: the static files of app/console, the page at `/` and its assets under
`/console/`, with strict security headers.

The files hold no data, so they are public even when auth is on: the page asks for a key and
sends it as a bearer token on every API call, and the routes enforce the key as they do for any
client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
PREFIX = "/console"

# No inline script or style anywhere, and Trusted Types on: the page cannot turn a string into
# HTML at all, so a name or message from the server can only ever be text.
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # Revalidate every time (the files carry an ETag): an upgraded service serves its new console.
    "Cache-Control": "no-cache",
}


def is_console_path(path: str) -> bool:
    """Whether `path` is one of the console's public files (the page or an asset)."""
    return path == "/" or path.startswith(PREFIX + "/")


class _ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


async def _page(request: Request) -> Response:
    return FileResponse(CONSOLE_DIR / "index.html", headers=SECURITY_HEADERS)


def install_console(app: FastAPI) -> None:
    """`GET /` and the files under `/console/`, outside the OpenAPI schema (they are not API)."""
    # A plain route, not a FastAPI one: the API's query checks are not for a page.
    app.add_route("/", _page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(PREFIX, _ConsoleFiles(directory=CONSOLE_DIR), name="console")
