"""Shared fixtures: a tiny base model, a store folder, an app with its lifespan running."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Read when ray is first imported (tests/deploy): no usage reports, and no node address taken
# from the machine's network interfaces: every Ray port stays on 127.0.0.1.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# The equality tests against transformers, PEFT and sentence-transformers hold in fp32: the whole
# session serves in it (DTYPE's default, `auto`, is bf16 on a CPU with AVX512-BF16), and so do
# the servers and workers tests start, which inherit the environment. Tests of bf16 ask for it.
os.environ["LORASERVE_DTYPE"] = "float32"

from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.helpers import write_base_model
from support.services import BUCKET, new_database, postgres_server, s3_server


@pytest.fixture
def base_folder(tmp_path: Path) -> Path:
    return write_base_model(tmp_path / "base")


@pytest.fixture
def settings(tmp_path: Path, base_folder: Path) -> Settings:
    return Settings(
        base_model=base_folder,
        adapters_dir=tmp_path / "adapters",
        data_dir=tmp_path / "data",
        # The GPU run sets LORASERVE_TEST_DEVICE=cuda to put the HTTP tests on the device.
        device=os.environ.get("LORASERVE_TEST_DEVICE", "cpu"),
        max_rank=64,
        max_request_rows=64,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


# --- shared state: each test that takes `database_url` or `store_url` runs on both kinds --------
@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    # moto takes any credentials; obstore reads them from the environment, as users' would be.
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_REGION", "us-east-1")):  # fmt: skip
        os.environ.setdefault(name, value)
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'loraserve.db'}"
    return new_database(request.getfixturevalue("postgres_server_url"))


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(STORE_URL, S3_ENDPOINT_URL): a fresh folder, or a fresh prefix in the test bucket."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}", None
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{BUCKET}/{tmp_path.name}", endpoint


@pytest.fixture
def store(settings: Settings) -> Path:
    """The adapter store of the service under test."""
    return settings.adapters_dir
