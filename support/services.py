"""Real PostgreSQL and S3 servers for the state tests, started by the suite on 127.0.0.1.

PostgreSQL: a cluster made with initdb in a temporary folder and run by pg_ctl, as the
`postgres` system user when the suite runs as root (initdb refuses root). S3: moto's server in
a thread. Where either cannot start, its tests are skipped on a developer machine and fail in CI
(CI=true), which installs Debian's postgresql first (.ci/run).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BUCKET = "loraserve-test"


def unavailable(what: str, why: str) -> None:
    """Skip on a developer machine; in CI a missing service is a failure, never a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is needed in CI: {why}")
    pytest.skip(f"{what} unavailable: {why}")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL on 127.0.0.1; yields a URL of its `postgres` database."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        unavailable("PostgreSQL", "initdb and pg_ctl not found (apt-get install postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="loraserve-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = _free_port()
    log = root / "server.log"
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "loraserve",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True)  # fmt: skip
        options = f"-h 127.0.0.1 -p {port} -k {sockets} -F -c fsync=off -c max_connections=200"
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-o", options,
                        "-w", "-t", "60", "start"], check=True, capture_output=True)  # fmt: skip
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        detail = getattr(exc, "stderr", b"") or b""
        unavailable("PostgreSQL", f"{exc}: {detail.decode(errors='replace')[-500:]}")
    try:
        yield f"postgresql://loraserve@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def new_database(server_url: str) -> str:
    """A fresh, empty database on the server; its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 API on 127.0.0.1 with the bucket BUCKET; yields its endpoint URL."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable("An S3 API server", f"moto is not installed ({exc})")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
        ).create_bucket(Bucket=BUCKET)  # fmt: skip
        yield endpoint
    finally:
        server.stop()
