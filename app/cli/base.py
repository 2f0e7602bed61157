"""What every `loraserve` command shares: where the service is, and one way to fail.

The examples (app.cli.examples) start from here too, so nothing here imports a command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import httpx
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.cli.files import InputError
from app.client import Client, ServiceError

# Exit statuses: the service failed or said no, or a file or option given by the user is wrong.
EXIT_SERVICE, EXIT_USAGE = 1, 2


class CliSettings(BaseSettings):
    """Where the service is and the key to use: LORASERVE_URL, LORASERVE_API_KEY."""

    model_config = SettingsConfigDict(env_prefix="LORASERVE_", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None


def first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def fail(message: str, status: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def demo_main(
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[Client, argparse.Namespace], None],
    argv: list[str] | None = None,
) -> None:
    """An example run as a module (`python -m app.cli.examples.seed`): --url, --api-key, its options."""
    settings = cli_settings()
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--url", default=settings.url, help="the service (env LORASERVE_URL)")
    parser.add_argument(
        "--api-key", default=settings.api_key, help="an admin key (env LORASERVE_API_KEY)"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    with failures_reported(args.url), Client(args.url, api_key=args.api_key) as client:
        run(client, args)


def cli_settings() -> CliSettings:
    """LORASERVE_URL and LORASERVE_API_KEY, or one `error:` line when they are malformed."""
    try:
        return CliSettings()
    except ValidationError as exc:
        fail(f"invalid settings: {first_error(exc)}", EXIT_USAGE)


@contextmanager
def failures_reported(url: str) -> Iterator[None]:
    """Turn the failures a user can cause or meet into one `error: ...` line and an exit status."""
    try:
        yield
    except ServiceError as exc:
        fail(str(exc), EXIT_SERVICE)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        fail(f"bad --url {url!r}: {exc}", EXIT_USAGE)
    except httpx.TransportError as exc:  # refused, reset, timed out
        fail(f"cannot reach the service at {url}: {exc or type(exc).__name__}", EXIT_SERVICE)
    except InputError as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:  # any other local file the command had to read or write
        fail(str(exc), EXIT_USAGE)
