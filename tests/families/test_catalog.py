"""Loading a base model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.families import load_base_model, load_family
from app.families.mlp.seed import make_regression, make_theta
from app.model import InvalidModelConfig, resolve_device
from app.settings import EMBEDDED_MODEL
from support.helpers import reference_forward, write_base_model


def test_loads_frozen_in_eval_mode(base_folder: Path) -> None:
    base = load_base_model(base_folder, torch.device("cpu"))
    assert not base.module.training
    assert all(not p.requires_grad for p in base.module.parameters())
    assert base.input_dim == 16 and base.output_dim == 4
    assert list(base.linears()) == ["layer1", "layer2"]
    assert len(base.fingerprint) == 64


def test_forward_matches_longhand(base_folder: Path) -> None:
    base = load_base_model(base_folder, torch.device("cpu"))
    x = torch.randn(5, 16)
    torch.testing.assert_close(
        base.module(x).double(), reference_forward(base_folder, x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("activation", [None, "tanh", "gelu"])
def test_activations_sit_between_layers_not_after_the_last(tmp_path: Path, activation) -> None:
    folder = write_base_model(tmp_path / "m", sizes=[6, 5, 4, 3], activation=activation)
    base = load_base_model(folder, torch.device("cpu"))
    x = torch.randn(3, 6)
    torch.testing.assert_close(
        base.module(x).double(), reference_forward(folder, x), rtol=1e-5, atol=1e-5
    )


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    folder = write_base_model(tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"architecture": "llama", "sizes": [2, 2]}))
    with pytest.raises(InvalidModelConfig, match="unknown architecture"):
        load_base_model(folder, torch.device("cpu"))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    folder = write_base_model(tmp_path / "m", sizes=[16, 8, 4])
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sizes": [16, 9, 4]}))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_base_model(folder, torch.device("cpu"))


def test_auto_device_is_cuda_only_when_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_embedded_seed_model_fits_y_equals_x_theta() -> None:
    family = load_family(EMBEDDED_MODEL, torch.device("cpu"))
    base = family.base
    assert family.config.sizes == [1001, 1000, 1000] and not family.config.bias  # type: ignore[attr-defined]
    assert list(base.linears()) == ["layer1", "layer2"]
    x, y = make_regression(256, make_theta(), seed=12345)  # rows it never saw
    with torch.inference_mode():
        mse = torch.nn.functional.mse_loss(base.module(x), y).item()
    assert mse < 1.0
    # The LoRA example's new data, from θ + 1, is far off: about 1000.
    _, y_new = make_regression(256, make_theta() + 1, seed=12345)
    with torch.inference_mode():
        assert torch.nn.functional.mse_loss(base.module(x), y_new).item() > 500
