"""Strict reading of PEFT adapter configs and tensors."""

from __future__ import annotations

import json

import pytest
import torch

from app.adapters import peft_format as fmt
from app.errors import InvalidAdapter, InvalidName
from tests.helpers import TINY_SIZES, linears_of, lora_tensors, peft_config

LINEARS = linears_of(TINY_SIZES)


def parse(config: dict, max_rank: int = 64):
    return fmt.parse_config(json.dumps(config).encode(), LINEARS, max_rank)


@pytest.mark.parametrize("name", ["a", "my-adapter_v1.2", "A" * 64, "0x"])
def test_good_names(name: str) -> None:
    assert fmt.check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../x", "a/b", ".hidden", "-x", "A" * 65, "naïve", "a b", "x\x00", "..", "é"]
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        fmt.check_name(name)


def test_parses_targets_ranks_and_scaling() -> None:
    config = parse(peft_config(4, 8, ["layer1", "layer2"], rank_pattern={"layer2": 2}))
    assert config.target_modules == ("layer1", "layer2")
    assert config.rank_for("layer2") == 2 and config.scaling_for("layer2") == 4.0


def test_regex_target_is_full_matched_and_suffix_names_match() -> None:
    regex = {**peft_config(2, 2, []), "target_modules": "layer[12]"}
    assert parse(regex).target_modules == ("layer1", "layer2")
    assert parse(peft_config(2, 2, ["layer2"])).target_modules == ("layer2",)
    excluded = parse(peft_config(2, 2, ["layer1", "layer2"], exclude_modules=["layer1"]))
    assert excluded.target_modules == ("layer2",)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"lora_bias": True}, "lora_bias"),
        ({"modules_to_save": ["layer2"]}, "modules_to_save"),
        ({"bias": "all"}, "bias"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights"),
        ({"init_lora_weights": "olora"}, "init_lora_weights"),
        ({"loftq_config": {"loftq_bits": 4}}, "loftq_config"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"r": 0}, "r"),
        ({"r": "8"}, "r"),
        ({"lora_alpha": -1}, "lora_alpha"),
        ({"r": 65}, "r"),
        ({"target_modules": ["nope"]}, "target_modules"),
        ({"target_modules": None}, "target_modules"),
        ({"rank_pattern": {"layer1": 100}}, "r"),
    ],
)
def test_unsupported_or_invalid_configs_name_the_field(extra: dict, field: str) -> None:
    with pytest.raises(InvalidAdapter) as info:
        parse({**peft_config(4, 8, ["layer1"]), **extra})
    assert info.value.param == field


def test_config_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidAdapter, match="not valid JSON"):
        fmt.parse_config(b"{nope", LINEARS, 64)


def test_header_must_match_exactly() -> None:
    config = parse(peft_config(4, 8, ["layer1", "layer2"]))
    tensors = lora_tensors(TINY_SIZES, ["layer1", "layer2"], 4)
    fmt.check_header(fmt.header_of(tensors), config, LINEARS)
    extra = {**tensors, "base_model.model.layer1.lora_magnitude_vector": torch.ones(8)}
    with pytest.raises(InvalidAdapter, match="unexpected tensors"):
        fmt.check_header(fmt.header_of(extra), config, LINEARS)
    missing = {k: v for k, v in tensors.items() if "layer2.lora_B" not in k}
    with pytest.raises(InvalidAdapter, match="missing tensors"):
        fmt.check_header(fmt.header_of(missing), config, LINEARS)
    wrong = {**tensors, "base_model.model.layer1.lora_A.weight": torch.zeros(3, 16)}
    with pytest.raises(InvalidAdapter, match=r"shape \(3, 16\), expected \(4, 16\)"):
        fmt.check_header(fmt.header_of(wrong), config, LINEARS)
    ints = {
        **tensors,
        "base_model.model.layer1.lora_A.weight": torch.zeros(4, 16, dtype=torch.int32),
    }
    with pytest.raises(InvalidAdapter, match="dtype"):
        fmt.check_header(fmt.header_of(ints), config, LINEARS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_half_precision_is_accepted_and_held_as_fp32(dtype: torch.dtype) -> None:
    config = parse(peft_config(4, 8, ["layer1"]))
    tensors = lora_tensors(TINY_SIZES, ["layer1"], 4, dtype=dtype)
    fmt.check_header(fmt.header_of(tensors), config, LINEARS)
    adapter = fmt.build_adapter(tensors, config)
    assert adapter.modules["layer1"].lora_A.dtype == torch.float32


def test_nan_and_inf_are_refused() -> None:
    config = parse(peft_config(4, 8, ["layer1"]))
    for bad in (float("nan"), float("inf")):
        tensors = lora_tensors(TINY_SIZES, ["layer1"], 4)
        tensors["base_model.model.layer1.lora_B.weight"][0, 0] = bad
        with pytest.raises(InvalidAdapter, match="NaN or inf"):
            fmt.build_adapter(tensors, config)


def test_written_config_round_trips() -> None:
    config = parse(
        peft_config(4, 8, ["layer1", "layer2"], use_rslora=True, alpha_pattern={"layer1": 2})
    )
    again = fmt.parse_config(fmt.config_json(config, "seed"), LINEARS, 64)
    assert again == config
