"""Tiny decoder bases on disk (one per layout, built once), and a service loaded on each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support.gen_helpers import LAYOUTS, write_tiny_causal_lm
from support.generate import engines, served  # noqa: F401 (fixtures for every module)


@pytest.fixture(scope="session")
def causal_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal")
    return {t: write_tiny_causal_lm(root / t, t, seed=1) for t in LAYOUTS}


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(min(4, torch.get_num_threads()))
