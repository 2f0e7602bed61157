"""PEFT-written adapters for causal-LM bases: the projections pass, the frozen layers never do."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from app.adapters import BaseInfo, base_info
from app.adapters import peft_format as fmt
from app.errors import InvalidAdapter
from app.families import load_base_model
from support.gen_helpers import write_tiny_causal_lm

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal")
    return {t: write_tiny_causal_lm(root / t, t) for t in ("llama", "gpt2")}


@pytest.fixture(scope="module")
def bases(folders: dict[str, Path]) -> dict[str, BaseInfo]:
    return {t: base_info(load_base_model(f, torch.device("cpu"))) for t, f in folders.items()}


def peft_adapter(folder: Path, out: Path, **config: Any) -> tuple[bytes, dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors) as PEFT's save_pretrained writes them for `folder`."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    with warnings.catch_warnings():  # PEFT warns about fan_in_fan_out and embedding layers
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **config))
        with torch.no_grad():  # B is zero at init; make the adapter do something
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        peft_model.save_pretrained(out)
    return (out / fmt.CONFIG_FILE).read_bytes(), load_file(out / fmt.WEIGHTS_FILE)


def check(base: BaseInfo, config_data: bytes, tensors: dict[str, torch.Tensor]) -> None:
    config = fmt.parse_config(config_data, base.linears, 64, base.conv1d, base.frozen)
    fmt.check_header(fmt.header_of(tensors), config, base.linears)
    fmt.build_adapter(tensors, config)


def parse(base: BaseInfo, **edit: Any) -> None:
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **edit}
    fmt.parse_config(json.dumps(config).encode(), base.linears, 64, base.conv1d, base.frozen)


def test_peft_adapter_for_every_llama_projection_is_accepted(folders, bases, tmp_path) -> None:
    config_data, tensors = peft_adapter(
        folders["llama"], tmp_path, target_modules=LLAMA_PROJECTIONS
    )
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in tensors
    config = fmt.parse_config(config_data, bases["llama"].linears, 64)
    assert len(config.target_modules) == 2 * len(LLAMA_PROJECTIONS)
    check(bases["llama"], config_data, tensors)


def test_peft_adapter_for_gpt2_conv1d_layers_is_accepted(folders, bases, tmp_path) -> None:
    config_data, tensors = peft_adapter(
        folders["gpt2"], tmp_path, target_modules=["c_attn", "c_proj"]
    )
    assert json.loads(config_data)["fan_in_fan_out"] is True  # PEFT's own choice for Conv1D
    base = bases["gpt2"]
    assert "transformer.h.0.attn.c_attn" in base.conv1d and "lm_head" not in base.conv1d
    check(base, config_data, tensors)
    # PEFT warns and sets it true for Conv1D anyway; false computes the same once converted.
    unset = json.dumps({**json.loads(config_data), "fan_in_fan_out": False}).encode()
    check(base, unset, tensors)


def test_gpt2_adapter_computes_what_peft_does(folders, bases, tmp_path) -> None:
    folder = folders["gpt2"]
    config_data, tensors = peft_adapter(folder, tmp_path, target_modules=["c_attn"])
    config = fmt.parse_config(config_data, bases["gpt2"].linears, 64, bases["gpt2"].conv1d)
    adapter = fmt.build_adapter(tensors, config)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder),
        LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True),
    )
    peft_model.load_adapter(str(tmp_path), adapter_name="saved")
    layer = peft_model.get_submodule("base_model.model.transformer.h.0.attn.c_attn")
    peft_delta = layer.get_delta_weight("saved")  # (in, out), as Conv1D holds its weight
    ours = adapter.modules["transformer.h.0.attn.c_attn"]
    ours_delta = ours.scaling * ours.lora_B @ ours.lora_A  # (out, in), as nn.Linear holds it
    torch.testing.assert_close(ours_delta, peft_delta.T)


@pytest.mark.parametrize(
    ("kind", "config", "param", "names"),
    [
        ("llama", {"target_modules": ["q_proj", "lm_head"]}, "target_modules", "lm_head"),
        ("llama", {"target_modules": ["embed_tokens"]}, "target_modules", "model.embed_tokens"),
        ("llama", {"target_modules": ".*"}, "target_modules", "lm_head"),
        ("gpt2", {"target_modules": ["c_attn", "wte"]}, "target_modules", "transformer.wte"),
        ("gpt2", {"target_modules": ["wpe"]}, "target_modules", "transformer.wpe"),
        ("llama", {"modules_to_save": ["lm_head"]}, "modules_to_save", "lm_head"),
        ("gpt2", {"modules_to_save": ["wte"]}, "modules_to_save", "transformer.wte"),
    ],
)
def test_targeting_embeddings_or_head_is_refused(bases, kind, config, param, names) -> None:
    with pytest.raises(InvalidAdapter) as info:
        parse(bases[kind], **config)
    assert (info.value.status, info.value.param) == (422, param)
    assert info.value.message.startswith(f"{param} names {names}: adapters may not change")


def test_excluding_the_head_from_a_regex_is_accepted(bases) -> None:
    parse(bases["llama"], target_modules=r".*_proj|lm_head", exclude_modules=["lm_head"])


@pytest.mark.parametrize(
    ("config", "param"),
    [
        ({"target_modules": ["q_proj", "embed_tokens"]}, "target_modules"),
        ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "modules_to_save"),
        (
            {"target_modules": ["q_proj"], "trainable_token_indices": [0, 1]},
            "trainable_token_indices",
        ),
    ],
)
def test_peft_adapters_that_change_the_embeddings_are_refused(
    folders, bases, tmp_path, config, param
) -> None:
    config_data, tensors = peft_adapter(folders["llama"], tmp_path, **config)
    with pytest.raises(InvalidAdapter) as info:
        check(bases["llama"], config_data, tensors)
    assert (info.value.status, info.value.param) == (422, param)
    # Their tensors alone are refused too, with the same reason.
    plain = json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}).encode()
    q_proj_only = fmt.parse_config(plain, bases["llama"].linears, 64)
    with pytest.raises(InvalidAdapter, match="adapters may not change the embeddings") as info:
        fmt.check_header(fmt.header_of(tensors), q_proj_only, bases["llama"].linears)
    assert info.value.param == "weights"


def test_fan_in_fan_out_on_a_linear_layer_is_refused(folders, bases, tmp_path) -> None:
    config_data, _ = peft_adapter(folders["llama"], tmp_path, target_modules=["q_proj"])
    edited = json.dumps({**json.loads(config_data), "fan_in_fan_out": True}).encode()
    base = bases["llama"]
    with pytest.raises(InvalidAdapter, match="only for layers that are Conv1D") as info:
        fmt.parse_config(edited, base.linears, 64, base.conv1d, base.frozen)
    assert (info.value.status, info.value.param) == (422, "fan_in_fan_out")


def test_modules_to_save_message_says_why(bases) -> None:
    with pytest.raises(InvalidAdapter, match="never full copies of base layers") as info:
        parse(bases["llama"], modules_to_save=["model.norm"])
    assert info.value.param == "modules_to_save"
