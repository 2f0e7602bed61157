"""The API tests' fixture: the adapter store of the service under test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store(settings) -> Path:
    return settings.adapters_dir
