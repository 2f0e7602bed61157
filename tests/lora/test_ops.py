"""LoRA math against the longhand reference."""

from __future__ import annotations

import math

import pytest
import torch

from app.lora import (
    LoraAdapter,
    LoraConfig,
    base_layer,
    init_lora_module,
    lora_scaling,
    merge_adapter,
    merged_linear,
    pattern_key,
    unmerged_linear,
)
from support.helpers import forward
from support.lora import SIZES, longhand, make_adapter, make_model


@pytest.mark.parametrize("r", [1, 2, 4, 8, 16, 32, 64])
def test_unmerged_matches_longhand_for_every_rank(r: int) -> None:
    model = make_model()
    adapter = make_adapter(model, r, ("layer1", "layer2"), seed=r)
    x = torch.randn(32, SIZES[0])
    out = forward(model, unmerged_linear(adapter), x)
    torch.testing.assert_close(out.double(), longhand(model, x, adapter), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("r", [1, 2, 4, 8, 16, 32, 64])
def test_merged_agrees_with_unmerged_within_1e4_relative(r: int) -> None:
    model = make_model()
    adapter = make_adapter(model, r, ("layer1", "layer2"), seed=100 + r)
    x = torch.randn(32, SIZES[0])
    unmerged = forward(model, unmerged_linear(adapter), x)
    merged = forward(model, merged_linear(merge_adapter(model, adapter)), x)
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)


def test_adapter_on_only_some_layers_leaves_the_others_at_base() -> None:
    model = make_model()
    adapter = make_adapter(model, 4, ("layer2",), seed=1)
    x = torch.randn(8, SIZES[0])
    out = forward(model, unmerged_linear(adapter), x)
    torch.testing.assert_close(out.double(), longhand(model, x, adapter), rtol=1e-5, atol=1e-5)
    merged = merge_adapter(model, adapter)
    assert set(merged) == {"layer2"}
    torch.testing.assert_close(forward(model, merged_linear(merged), x), out, rtol=1e-4, atol=1e-5)


def test_merge_never_writes_the_base_weights() -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = make_adapter(model, 8, ("layer1", "layer2"), seed=2)
    merged = merge_adapter(model, adapter)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # Restoring is dropping the copy: the base answers exactly as before any merge.
    x = torch.randn(4, SIZES[0])
    assert merged["layer1"].data_ptr() != base_layer(model, "layer1").weight.data_ptr()
    torch.testing.assert_close(model(x), longhand(model, x, None).float(), rtol=0, atol=1e-5)


def test_rslora_scales_by_alpha_over_sqrt_r() -> None:
    assert lora_scaling(16, 4, use_rslora=True) == 8.0
    assert lora_scaling(16, 4, use_rslora=False) == 4.0
    model = make_model()
    adapter = make_adapter(model, 16, ("layer1", "layer2"), seed=3, use_rslora=True)
    assert adapter.modules["layer1"].scaling == pytest.approx(16 / math.sqrt(16))
    x = torch.randn(8, SIZES[0])
    out = forward(model, unmerged_linear(adapter), x)
    torch.testing.assert_close(out.double(), longhand(model, x, adapter), rtol=1e-5, atol=1e-5)


def test_rank_and_alpha_patterns_override_per_module() -> None:
    model = make_model()
    adapter = make_adapter(
        model,
        8,
        ("layer1", "layer2"),
        seed=4,
        rank_pattern={"layer2": 2},
        alpha_pattern={"layer2": 6},
    )
    assert adapter.modules["layer1"].rank == 8
    assert adapter.modules["layer1"].scaling == pytest.approx(16 / 8)
    assert adapter.modules["layer2"].rank == 2
    assert adapter.modules["layer2"].scaling == pytest.approx(6 / 2)
    x = torch.randn(8, SIZES[0])
    out = forward(model, unmerged_linear(adapter), x)
    torch.testing.assert_close(out.double(), longhand(model, x, adapter), rtol=1e-5, atol=1e-5)


def test_pattern_key_follows_peft_suffix_rule() -> None:
    patterns = {"layer2": 4, r"blocks\.\d+\.proj": 2}
    assert pattern_key(patterns, "layer2") == "layer2"
    assert pattern_key(patterns, "model.layer2") == "layer2"
    assert pattern_key(patterns, "xlayer2") is None
    assert pattern_key(patterns, "enc.blocks.3.proj") == r"blocks\.\d+\.proj"
    assert pattern_key(patterns, "layer1") is None


def test_new_module_starts_as_exactly_the_base() -> None:
    model = make_model()
    gen = torch.Generator().manual_seed(0)
    module = init_lora_module(96, 80, 4, 2.0, gen)
    assert torch.count_nonzero(module.lora_B) == 0
    assert module.lora_A.abs().max() <= 1 / math.sqrt(96)
    adapter = LoraAdapter(LoraConfig(4, 8, ("layer1",)), {"layer1": module})
    x = torch.randn(4, SIZES[0])
    assert torch.equal(forward(model, unmerged_linear(adapter), x), model(x))


def test_new_module_shapes_and_spread_come_from_the_generator() -> None:
    module = init_lora_module(96, 80, 4, 2.0, torch.Generator().manual_seed(0))
    assert module.lora_A.shape == (4, 96) and module.lora_B.shape == (80, 4)
    assert module.rank == 4 and module.scaling == 2.0
    bound = 1 / math.sqrt(96)
    assert module.lora_A.min() < -bound / 2 and module.lora_A.max() > bound / 2
    again = init_lora_module(96, 80, 4, 2.0, torch.Generator().manual_seed(0))
    other = init_lora_module(96, 80, 4, 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(again.lora_A, module.lora_A)
    assert not torch.equal(other.lora_A, module.lora_A)


def test_adapter_nbytes_counts_every_a_and_b() -> None:
    model = make_model()
    adapter = make_adapter(model, 4, ("layer1", "layer2"), seed=5)
    assert adapter.nbytes == 4 * (4 * 96 + 80 * 4 + 4 * 80 + 72 * 4)
    # A 16-bit adapter on the CPU computes its terms in an fp32 copy (`terms`), counted too.
    half = adapter.to(torch.device("cpu"), torch.float16)
    assert half.nbytes == adapter.nbytes // 2 + adapter.nbytes
    assert half.terms.modules["layer1"].lora_A.dtype == torch.float32
    assert adapter.terms is adapter


def test_adapter_to_casts_every_tensor_and_keeps_the_scaling() -> None:
    model = make_model()
    adapter = make_adapter(model, 4, ("layer1", "layer2"), seed=6, alpha=12.0)
    wide = adapter.to(torch.device("cpu"), torch.float64)
    assert wide.config == adapter.config
    assert set(wide.modules) == {"layer1", "layer2"}
    for name, m in wide.modules.items():
        assert m.lora_A.dtype == torch.float64 and m.lora_B.dtype == torch.float64
        assert m.scaling == adapter.modules[name].scaling == 3.0
        assert torch.equal(m.lora_A, adapter.modules[name].lora_A.double())
        assert torch.equal(m.lora_B, adapter.modules[name].lora_B.double())


def test_adapter_to_moves_every_tensor_to_the_device() -> None:
    adapter = make_adapter(make_model(), 2, ("layer1", "layer2"), seed=7)
    meta = torch.device("meta")
    for m in adapter.to(meta, torch.float32).modules.values():
        assert m.lora_A.device == meta and m.lora_B.device == meta


def test_merged_weights_keep_the_base_dtype_with_one_rounding() -> None:
    model = make_model().to(torch.bfloat16)
    adapter = make_adapter(model, 4, ("layer1",), seed=8)
    merged = merge_adapter(model, adapter)["layer1"]
    assert merged.dtype == torch.bfloat16
    m = adapter.modules["layer1"]
    exact = (
        base_layer(model, "layer1").weight.double()
        + m.scaling * m.lora_B.double() @ m.lora_A.double()
    )
    torch.testing.assert_close(merged.double(), exact, rtol=2**-8, atol=1e-6)  # half a bf16 ulp
