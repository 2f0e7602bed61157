"""Strict reading of PEFT adapter configs and tensors."""

from __future__ import annotations

import json

import pytest
import torch

from app.adapters import peft_format as fmt
from app.errors import InvalidAdapter, InvalidName
from support.helpers import TINY_SIZES, linears_of, lora_tensors, peft_config

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


def parse_text(text: str):
    return fmt.parse_config(text.encode(), LINEARS, 64)


def with_field(field: str, raw_value: str) -> str:
    """A config's JSON text with one field's value written literally (NaN, 1e400, ...)."""
    config = {k: v for k, v in peft_config(4, 8, ["layer1"]).items() if k != field}
    return json.dumps(config)[:-1] + f', "{field}": {raw_value}}}'


@pytest.mark.parametrize(
    ("field", "raw_value", "param"),
    [
        ("use_rslora", '"false"', "use_rslora"),
        ("use_rslora", "0", "use_rslora"),
        ("r", "true", "r"),
        ("r", "4.0", "r"),
        ("lora_alpha", '"8"', "lora_alpha"),
        ("lora_alpha", "true", "lora_alpha"),
        ("rank_pattern", '{"layer1": "2"}', "rank_pattern.layer1"),
        ("rank_pattern", '{"layer1": 0}', "rank_pattern.layer1"),
        ("rank_pattern", "[]", "rank_pattern"),
        ("alpha_pattern", '{"layer1": true}', "alpha_pattern.layer1"),
        ("alpha_pattern", '{"layer1": -2}', "alpha_pattern.layer1"),
        ("target_modules", "5", "target_modules"),
        ("target_modules", '["layer1", 2]', "target_modules"),
        ("bias", "null", "bias"),
        ("peft_type", '"lora"', "peft_type"),
        ("init_lora_weights", "1", "init_lora_weights"),
        ("lora_bias", '"false"', "lora_bias"),
        ("fan_in_fan_out", '"false"', "fan_in_fan_out"),
        ("use_dora", '"false"', "use_dora"),
        ("arrow_config", '{"top_k": 2}', "arrow_config"),
        ("init_lora_weights", '"lora_ga"', "init_lora_weights"),
        ("rank_pattern", '{"(": 2}', "rank_pattern"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(field: str, raw_value: str, param: str) -> None:
    with pytest.raises(InvalidAdapter) as info:
        parse_text(with_field(field, raw_value))
    assert info.value.param == param, info.value.message
    assert len(info.value.message) < 300


@pytest.mark.parametrize(
    ("field", "raw_value", "param"),
    [
        ("lora_alpha", "NaN", "lora_alpha"),
        ("lora_alpha", "Infinity", "lora_alpha"),
        ("lora_alpha", "-Infinity", "lora_alpha"),
        ("lora_alpha", "1e400", "lora_alpha"),
        ("lora_alpha", "1" + "0" * 400, "lora_alpha"),
        ("lora_alpha", "1e300", "lora_alpha"),  # finite, but alpha / r is beyond float32
        ("alpha_pattern", '{"layer1": 1e400}', "alpha_pattern.layer1"),
        ("alpha_pattern", '{"layer1": NaN}', "alpha_pattern.layer1"),
        ("r", "1" + "0" * 400, "r"),
        ("rank_pattern", '{"layer9": ' + "1" * 401 + "}", "r"),
    ],
)
def test_non_finite_and_overflowing_numbers_are_refused(
    field: str, raw_value: str, param: str
) -> None:
    with pytest.raises(InvalidAdapter) as info:
        parse_text(with_field(field, raw_value))
    assert info.value.param == param, info.value.message
    assert len(info.value.message) < 300


def test_deeply_nested_json_is_refused_not_a_crash() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InvalidAdapter) as info:
        parse_text(with_field("something_new", deep))
    assert info.value.param == "config"


def test_unknown_keys_are_ignored_whatever_they_hold() -> None:
    extra = {
        "task_type": "CAUSAL_LM",
        "lora_dropout": 0.05,
        "megatron_core": "megatron.core",
        "peft_version": "0.21.2",
        "something_new": {"nested": [1, None, "x", {"deeper": [True]}]},
    }
    config = parse({**peft_config(4, 8, ["layer1"]), **extra})
    assert config.r == 4 and config.lora_alpha == 8.0 and config.use_rslora is False


def test_use_rslora_false_means_false_and_true_scales_by_sqrt_r() -> None:
    assert not parse(peft_config(4, 8, ["layer1"], use_rslora=False)).use_rslora
    rslora = parse(peft_config(4, 8, ["layer1"], use_rslora=True))
    assert rslora.use_rslora and rslora.scaling_for("layer1") == 4.0


def test_what_peft_save_pretrained_writes_is_accepted(tmp_path) -> None:
    from peft import LoraConfig as PeftLoraConfig

    for kwargs in (
        {"r": 4, "lora_alpha": 8},
        {"r": 4, "lora_alpha": 16, "use_rslora": True, "rank_pattern": {"layer2": 2}},
        {"r": 2, "lora_alpha": 4.5, "alpha_pattern": {"layer1": 3}, "lora_dropout": 0.1},
    ):
        PeftLoraConfig(target_modules=["layer1", "layer2"], **kwargs).save_pretrained(tmp_path)
        data = (tmp_path / "adapter_config.json").read_bytes()
        config = fmt.parse_config(data, LINEARS, 64)
        assert config.r == kwargs["r"] and config.lora_alpha == kwargs["lora_alpha"]
        assert config.use_rslora == kwargs.get("use_rslora", False)


def test_long_names_are_echoed_capped() -> None:
    with pytest.raises(InvalidName) as info:
        fmt.check_name("a" * 10_000)
    assert len(info.value.message) < 300 and "10000" in info.value.message


@pytest.mark.parametrize(
    ("dtype", "value", "ok"),
    [
        (torch.float32, 1e3, True),
        (torch.float32, 1e19, False),  # 2 * 4 * 1e19 * 1e19 is past float32's 3.4e38
        (torch.float16, 1e1, True),
        (torch.float16, 1e3, False),  # fine in float32, inf in float16
    ],
)
def test_scaling_times_weights_must_fit_the_serving_dtype(
    dtype: torch.dtype, value: float, ok: bool
) -> None:
    config = parse(peft_config(4, 8, ["layer1"]))
    tensors = lora_tensors(TINY_SIZES, ["layer1"], 4)
    tensors["base_model.model.layer1.lora_A.weight"][0, 0] = value
    tensors["base_model.model.layer1.lora_B.weight"][0, 0] = value
    if ok:
        fmt.build_adapter(tensors, config, dtype)
    else:
        with pytest.raises(InvalidAdapter, match="beyond"):
            fmt.build_adapter(tensors, config, dtype)


@pytest.mark.parametrize(
    ("data", "message", "param"),
    [
        (
            b"{nope",
            "adapter_config.json is not valid JSON: key must be a string at line 1 column 2",
            "config",
        ),
        (
            b"",
            "adapter_config.json is not valid JSON: EOF while parsing a value at line 1 column 0",
            "config",
        ),
        (b"[]", "adapter_config.json must be a JSON object", "config"),
        (b"4", "adapter_config.json must be a JSON object", "config"),
        (b'{"target_modules": ["layer1"]}', "r is required", "r"),
        (
            b'{"r": 4, "lora_alpha": "8", "target_modules": ["layer1"]}',
            "lora_alpha: Input should be a valid number",
            "lora_alpha",
        ),
    ],
)
def test_config_errors_say_exactly_what_is_wrong_and_where(
    data: bytes, message: str, param: str
) -> None:
    with pytest.raises(InvalidAdapter) as info:
        fmt.parse_config(data, LINEARS, 64)
    assert (info.value.message, info.value.param) == (message, param)


def test_written_config_is_peft_s_layout_exactly() -> None:
    config = parse(
        peft_config(
            4, 8, ["layer1", "layer2"], rank_pattern={"layer2": 2}, alpha_pattern={"layer1": 2}
        )
    )
    expected = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": "seed",
        "r": 4,
        "lora_alpha": 8.0,
        "target_modules": ["layer1", "layer2"],
        "use_rslora": False,
        "rank_pattern": {"layer2": 2},
        "alpha_pattern": {"layer1": 2.0},
        "bias": "none",
        "fan_in_fan_out": False,
        "lora_dropout": 0.0,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    assert fmt.config_json(config, "seed") == (json.dumps(expected, indent=2) + "\n").encode()


def test_expected_shapes_follow_the_rank_pattern() -> None:
    config = parse(peft_config(4, 8, ["layer1", "layer2"], rank_pattern={"layer2": 2}))
    assert fmt.expected_shapes(config, LINEARS) == {
        "base_model.model.layer1.lora_A.weight": (4, 16),
        "base_model.model.layer1.lora_B.weight": (8, 4),
        "base_model.model.layer2.lora_A.weight": (2, 8),
        "base_model.model.layer2.lora_B.weight": (4, 2),
    }


WIDE = linears_of([16, 8, 8, 8, 4])  # four layers: eight tensors


def test_header_errors_are_exact_and_name_the_weights() -> None:
    config = fmt.parse_config(json.dumps(peft_config(4, 8, list(WIDE))).encode(), WIDE, 64)
    tensors = lora_tensors([16, 8, 8, 8, 4], list(WIDE), 4)
    header = fmt.header_of(tensors)
    extra = {f"base_model.model.extra{i}.weight": ((1,), "F32") for i in range(6)}
    cases = [
        (
            {**header, **extra},
            f"unexpected tensors {sorted(extra)[:5]}; expected only LoRA A/B of "
            "['layer1', 'layer2', 'layer3', 'layer4']",
        ),
        ({}, f"missing tensors {sorted(header)[:5]}"),
        (
            {**header, "base_model.model.layer2.lora_B.weight": ((8, 3), "F32")},
            "base_model.model.layer2.lora_B.weight has shape (8, 3), expected (8, 4)",
        ),
        (
            fmt.header_of(
                {
                    **tensors,
                    "base_model.model.layer1.lora_A.weight": torch.zeros(4, 16, dtype=torch.int32),
                }
            ),
            "base_model.model.layer1.lora_A.weight has dtype torch.int32; accepted: F32, F16, BF16",
        ),
    ]
    for bad, message in cases:
        with pytest.raises(InvalidAdapter) as info:
            fmt.check_header(bad, config, WIDE)
        assert (info.value.message, info.value.param) == (message, "weights")


def test_nan_weights_are_refused_naming_the_tensor_and_the_weights() -> None:
    config = parse(peft_config(4, 8, ["layer1"]))
    tensors = lora_tensors(TINY_SIZES, ["layer1"], 4)
    tensors["base_model.model.layer1.lora_B.weight"][2, 1] = float("nan")
    with pytest.raises(InvalidAdapter) as info:
        fmt.build_adapter(tensors, config)
    assert (info.value.message, info.value.param) == (
        "base_model.model.layer1.lora_B.weight holds NaN or inf values",
        "weights",
    )


def test_each_module_gets_its_own_scaling() -> None:
    config = parse(
        peft_config(
            4, 8, ["layer1", "layer2"], rank_pattern={"layer2": 2}, alpha_pattern={"layer1": 2}
        )
    )
    tensors = lora_tensors(TINY_SIZES, ["layer1", "layer2"], {"layer1": 4, "layer2": 2})
    adapter = fmt.build_adapter(tensors, config)
    assert adapter.modules["layer1"].scaling == 2 / 4 and adapter.modules["layer2"].scaling == 8 / 2


def _one_rank(value: float, r: int = 16) -> tuple:
    """A rank-1 layer1 adapter (alpha 1) in a config whose default rank is `r`."""
    config = parse(peft_config(r, 1, ["layer1"], rank_pattern={"layer1": 1}))
    tensors = lora_tensors(TINY_SIZES, ["layer1"], 1)
    a = tensors["base_model.model.layer1.lora_A.weight"]
    b = tensors["base_model.model.layer1.lora_B.weight"]
    a.clamp_(-1, 1)
    b.clamp_(-1, 1)
    a[0, 0] = value
    b[0, 0] = 1.0
    return tensors, config


def test_the_overflow_bound_uses_the_module_s_own_rank() -> None:
    # scaling (1 / 1) * rank 1 * 1e4 * 1 fits float16; with the default rank 16 it would not.
    tensors, config = _one_rank(1e4)
    fmt.build_adapter(tensors, config, torch.float16)


def test_a_bound_of_exactly_the_dtype_s_max_is_accepted() -> None:
    tensors, config = _one_rank(65504.0)
    fmt.build_adapter(tensors, config, torch.float16)
    tensors, config = _one_rank(65536.0)
    with pytest.raises(InvalidAdapter) as info:
        fmt.build_adapter(tensors, config, torch.float16)
    assert info.value.param == "weights"
    assert info.value.message == (
        "scaling * B @ A of layer1 may reach 6.55e+04, beyond torch.float16 (max 6.55e+04); "
        "answers would not be finite"
    )


def test_header_of_names_unaccepted_dtypes_by_torch_s_name() -> None:
    tensors = {"k": torch.zeros(2, 3, dtype=torch.int64), "h": torch.zeros(1, dtype=torch.float16)}
    assert fmt.header_of(tensors) == {"k": ((2, 3), "torch.int64"), "h": ((1,), "F16")}


def test_bad_names_are_refused_with_the_rule_and_the_field() -> None:
    rule = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ (letters, digits, '.', '_', '-')"
    with pytest.raises(InvalidName) as info:
        fmt.check_name("a/b")
    assert (info.value.message, info.value.param) == (
        f"adapter name 'a/b' must match {rule}",
        "name",
    )
    with pytest.raises(InvalidName) as info:
        fmt.check_name("", "adapter")
    assert (info.value.message, info.value.param) == (
        f"adapter name '' must match {rule}",
        "adapter",
    )


@pytest.mark.parametrize(
    ("extra", "message", "param"),
    [
        ({"use_dora": True}, "use_dora=True is not supported", "use_dora"),
        (
            {"modules_to_save": ["layer2"]},
            "modules_to_save=['layer2'] is not supported: "
            "an adapter holds only LoRA A and B, never full copies of base layers",
            "modules_to_save",
        ),
        (
            {"init_lora_weights": "pissa_niter_4"},
            "init_lora_weights='pissa_niter_4' rewrites the base weights and is not supported",
            "init_lora_weights",
        ),
        ({"r": 65}, "rank 65 of r is over the limit of 64", "r"),
        (
            {"rank_pattern": {"layer1": 100}},
            "rank 100 of rank_pattern.layer1 is over the limit of 64",
            "r",
        ),
        ({"target_modules": None}, "target_modules is required", "target_modules"),
        (
            {"target_modules": ["nope"]},
            "target_modules ['nope'] matches no linear layer of the base (layers: layer1, layer2)",
            "target_modules",
        ),
        (
            {"target_modules": "("},
            "target_modules is not a regular expression RE2 accepts: missing ): (",
            "target_modules",
        ),
        (
            {"exclude_modules": "("},
            "exclude_modules is not a regular expression RE2 accepts: missing ): (",
            "exclude_modules",
        ),
        (
            {"rank_pattern": {"(": 2}},
            "rank_pattern key '(' is not a regular expression RE2 accepts: "
            r"missing ): (.*\.)?(()$",
            "rank_pattern",
        ),
        (
            {"alpha_pattern": {"(": 2}},
            "alpha_pattern key '(' is not a regular expression RE2 accepts: "
            r"missing ): (.*\.)?(()$",
            "alpha_pattern",
        ),
        (
            {"lora_alpha": 5e-324},  # alpha / r underflows to 0
            "the scaling of layer1 (alpha / r) is 0, beyond float32",
            "lora_alpha",
        ),
    ],
)
def test_refused_configs_say_exactly_why(extra: dict, message: str, param: str) -> None:
    with pytest.raises(InvalidAdapter) as info:
        parse({**peft_config(4, 8, ["layer1"]), **extra})
    assert (info.value.message, info.value.param) == (message, param)


def test_rank_and_scaling_limits_are_inclusive() -> None:
    assert parse(peft_config(64, 8, ["layer1"]), max_rank=64).r == 64
    largest = float(torch.finfo(torch.float32).max)  # alpha / 1: exactly float32's max
    assert parse(peft_config(1, largest, ["layer1"])).scaling_for("layer1") == largest


def test_no_match_lists_the_layers_capped() -> None:
    linears = {f"block{i}.attention.q_proj": (16, 16) for i in range(20)}
    layers = ", ".join(linears)
    with pytest.raises(InvalidAdapter) as info:
        fmt.parse_config(json.dumps(peft_config(4, 8, ["nope"])).encode(), linears, 64)
    assert info.value.message == (
        "target_modules ['nope'] matches no linear layer of the base "
        f"(layers: {layers[:256]}... ({len(layers)} characters))"
    )


def test_list_targets_match_whole_names_or_dotted_suffixes() -> None:
    linears = {"encoder.layer1": (16, 8), "decoder.layer1": (8, 4), "sublayer1": (4, 4)}
    config = fmt.parse_config(json.dumps(peft_config(4, 8, ["layer1"])).encode(), linears, 64)
    assert config.target_modules == ("encoder.layer1", "decoder.layer1")
