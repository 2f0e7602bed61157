"""Start the real server (the Dockerfile's exact command) on a free port, for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def container_command() -> list[str]:
    """The CMD of the Dockerfile, exactly."""
    match = re.search(r"^CMD (\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no exec-form CMD"
    return list(json.loads(match.group(1)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, ready_s: float, log: Path | None = None
) -> None:
    """Until `url`/readyz answers 200; fails if the process exits first (with its log's end)."""
    start = time.perf_counter()
    while True:
        exited, late = proc.poll() is not None, time.perf_counter() - start >= ready_s
        if exited or late:
            why = "exited during start-up" if exited else f"not ready within {ready_s} s"
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise AssertionError(f"the server {why}\n{tail}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)


@contextmanager
def launched(
    argv: Sequence[str],
    url: str,
    env: Mapping[str, str],
    ready_s: float,
    log: Path | None = None,
    cwd: Path = ROOT,
    inherit: bool = True,
    stop_s: float = 30,
) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` run in `cwd` (the repository) with `env` (over this process's environment unless
    `inherit` is false), once `url` answers /readyz (its output to `log` when given); SIGTERM at
    the end, SIGKILL if it has not stopped `stop_s` later (uvicorn waits for requests that may
    never end). Every server a test, a benchmark or a script starts starts here."""
    out = log.open("wb") if log is not None else None
    full = {**os.environ, **env} if inherit else dict(env)
    proc = subprocess.Popen(argv, cwd=cwd, env=full, stdout=out, stderr=out)
    try:
        wait_ready(proc, url, ready_s, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=stop_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        if out is not None:
            out.close()


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    startup_s: float


@contextmanager
def running_server(
    tmp_path: Path, log: Path | None = None, ready_s: float = 30, **settings: str
) -> Iterator[Server]:
    """The server on 127.0.0.1 with LORASERVE_* settings; SIGTERM at the end unless already dead.

    With `log`, the server's stdout and stderr go to that file (to read its log lines).
    """
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "LORASERVE_HOST": "127.0.0.1",
        "LORASERVE_PORT": str(port),
        "LORASERVE_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "LORASERVE_DATA_DIR": str(tmp_path / "data"),
        "LORASERVE_DEVICE": "cpu",
        **{f"LORASERVE_{k.upper()}": v for k, v in settings.items()},
    }
    start = time.perf_counter()
    url = f"http://127.0.0.1:{port}"
    with launched(container_command(), url, env, ready_s, log) as proc:
        yield Server(url, proc, time.perf_counter() - start)
        stopped_by_us = proc.poll() is None
    if stopped_by_us:  # uvicorn shuts down gracefully, then re-raises the signal as its status
        assert proc.returncode in (0, -signal.SIGTERM), proc.returncode
