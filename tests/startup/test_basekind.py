"""Which base model settings name a decoder, from their files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.settings import EMBEDDED_MODEL
from app.startup.basekind import names_decoder


def _folder(tmp_path: Path, config: object) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, True),
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, True),
        ({"architectures": ["BertModel"], "model_type": "bert"}, False),
        ({"model_type": "llama"}, False),
        (["not", "an", "object"], False),
    ],
)
def test_folders(tmp_path: Path, config: object, expected: bool) -> None:
    assert names_decoder(_folder(tmp_path, config)) is expected


def test_files_names_and_defaults(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"{}")
    assert names_decoder(gguf)
    assert not names_decoder(weights)
    assert names_decoder("SmolLM2-135M-Instruct")
    assert names_decoder("SmolLM2-135M-Instruct/")  # the loader reads it as a Path too
    assert not names_decoder("all-MiniLM-L6-v2")
    assert not names_decoder(str(tmp_path / "missing"))
    assert not names_decoder(EMBEDDED_MODEL)
    assert not names_decoder(None)
    assert not names_decoder("")  # the working directory, as Settings reads it
