"""Shared fixtures: a tiny base model, a store folder, an app with its lifespan running."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.helpers import write_base_model


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
