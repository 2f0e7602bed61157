"""The seed model's re-create command is deterministic, and `--check` compares without writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.families.mlp.config import ModelConfig
from app.families.mlp.seed import (
    SEED_CONFIG,
    TARGET_MSE,
    main,
    make_regression,
    make_theta,
    model_files,
)

# The full run takes minutes (about 50 epochs of 10,000 rows); a small model shows the same
# property in a second: the same seed gives the same bytes.
SMALL = ["--sizes", "17,9,5", "--rows", "512", "--max-epochs", "3"]


def test_the_same_seed_gives_identical_bytes() -> None:
    config = ModelConfig(architecture="mlp", sizes=[17, 9, 5], bias=False)
    first = model_files(rows=512, max_epochs=3, config=config)
    second = model_files(rows=512, max_epochs=3, config=config)
    assert first == second
    assert first["config.json"] == config.to_json().encode()


def test_check_passes_on_what_the_command_wrote(tmp_path: Path, capsys) -> None:
    main(["--out", str(tmp_path), *SMALL])
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    main(["--out", str(tmp_path), "--check", *SMALL])
    assert "model.safetensors sha256" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == written


def test_check_fails_on_different_weights_and_writes_nothing(tmp_path: Path, capsys) -> None:
    main(["--out", str(tmp_path), *SMALL])
    weights = tmp_path / "model.safetensors"
    changed = bytearray(weights.read_bytes())
    changed[-1] ^= 1
    weights.write_bytes(bytes(changed))
    with pytest.raises(SystemExit) as failed:
        main(["--out", str(tmp_path), "--check", *SMALL])
    assert failed.value.code == 1
    assert "model.safetensors" in capsys.readouterr().err
    assert weights.read_bytes() == bytes(changed)


def test_the_committed_model_meets_the_commands_target() -> None:
    # Bit-for-bit: `python -m app.families.mlp.seed --check` (minutes, so not run here).
    folder = Path(__file__).resolve().parents[3] / "models" / "seed-linear"
    assert (folder / "config.json").read_text() == SEED_CONFIG.to_json()
    weights = load_file(folder / "model.safetensors")
    x, y = make_regression(10_000, make_theta(), seed=1)  # the training data of `pretrain`
    with torch.no_grad():
        predicted = x @ weights["layer1.weight"].T @ weights["layer2.weight"].T  # (N, 1000)
    assert torch.nn.functional.mse_loss(predicted, y).item() < TARGET_MSE
