"""config.json of a base model: every field checked strictly, never coerced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.families.mlp.config import ModelConfig
from app.model import InvalidModelConfig

GOOD = {"architecture": "mlp", "sizes": [16, 8, 4], "bias": True, "activation": "relu"}


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"),
    [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)],
)
def test_the_three_float_dtypes_are_accepted(dtype: str, torch_dtype: torch.dtype) -> None:
    assert ModelConfig.from_dict({**GOOD, "dtype": dtype}).torch_dtype == torch_dtype


def test_dtype_defaults_to_float32_and_bias_to_false() -> None:
    config = ModelConfig.from_dict({"architecture": "mlp", "sizes": [2, 3]})
    assert config.dtype == "float32" and config.bias is False and config.activation is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dtype", "float64"),
        ("dtype", "int8"),
        ("dtype", "Float32"),
        ("dtype", 32),
        ("dtype", ["float32"]),  # unhashable: must be refused, not a TypeError
        ("dtype", None),
        ("bias", "false"),  # would be true if coerced
        ("bias", "true"),
        ("bias", 0),
        ("bias", 1),
        ("bias", None),
        ("activation", "sigmoid"),
        ("activation", "ReLU"),
        ("activation", ["relu"]),
        ("activation", False),
        ("sizes", [16]),
        ("sizes", [16, 0, 4]),
        ("sizes", [16, -8, 4]),
        ("sizes", [16, 8.0, 4]),
        ("sizes", [16, "8", 4]),
        ("sizes", [16, True, 4]),
        ("sizes", "16,8,4"),
        ("architecture", 1),
        ("architecture", None),
    ],
)
def test_a_field_of_the_wrong_type_or_value_is_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidModelConfig):
        ModelConfig.from_dict({**GOOD, field: value})


def test_the_checks_hold_for_a_config_built_in_code_too() -> None:
    with pytest.raises(InvalidModelConfig, match="dtype"):
        ModelConfig(architecture="mlp", sizes=[2, 2], dtype="float64")
    with pytest.raises(InvalidModelConfig, match="bias"):
        ModelConfig(architecture="mlp", sizes=[2, 2], bias="false")  # type: ignore[arg-type]


def test_unknown_keys_are_ignored_as_in_hf_configs() -> None:
    config = ModelConfig.from_dict({**GOOD, "torch_dtype": "float64", "notes": {"a": 1}})
    assert config == ModelConfig.from_dict(GOOD)


def test_round_trips_through_json() -> None:
    config = ModelConfig.from_dict({**GOOD, "dtype": "bfloat16"})
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config


@pytest.mark.parametrize("text", ["", "{", "[" * 100_000 + "]" * 100_000, "[1, 2]", '"mlp"'])
def test_an_unreadable_config_json_is_invalid(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(InvalidModelConfig):
        ModelConfig.load(tmp_path)


def test_a_missing_config_json_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelConfig, match="cannot read"):
        ModelConfig.load(tmp_path)
