"""The predictor: each path (base, one adapter, stacked, merged) against the longhand reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import app.engine.predictor as predictor_module
from app.adapters import AdapterRegistry, BaseInfo
from app.engine import Predictor
from app.errors import AdapterNotFound
from app.families import load_base_model
from support.helpers import (
    RegistryByName,
    adapter_files,
    lora_tensors,
    peft_config,
    reference_forward,
    write_base_model,
)

SIZES = [16, 8, 4]
TARGETS = [("layer1", "layer2"), ("layer1",), ("layer2",)]


@pytest.fixture
def setup(tmp_path: Path):
    folder = write_base_model(tmp_path / "base", SIZES)
    base = load_base_model(folder, torch.device("cpu"))
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    info = BaseInfo(linears, base.name, base.fingerprint, base.device, base.dtype)
    registry = RegistryByName.local(tmp_path / "adapters", info, 64, 1 << 30)
    specs = {}
    for i in range(4):
        specs[f"a{i}"] = upload(registry, f"a{i}", rank=1 + i, targets=TARGETS[i % 3], seed=i)
    return folder, Predictor(base, registry, 1 << 30), specs


def upload(registry: AdapterRegistry, name: str, rank: int, targets, seed: int):
    config = peft_config(rank, 2.0 + seed, targets)
    tensors = lora_tensors(SIZES, targets, rank, seed=seed)
    registry.upload(name, *adapter_files(config, tensors), overwrite=True)
    return config, tensors


def assert_rows_match_reference(folder, x, out, names, specs) -> None:
    assert out.dtype == torch.float32 and out.shape == (len(x), SIZES[-1])
    for row, name in enumerate(names):
        config, tensors = specs[name] if name else (None, None)
        ref = reference_forward(folder, x[row : row + 1], config, tensors)
        torch.testing.assert_close(out[row : row + 1].double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["auto", "unmerged", "merged"])
@pytest.mark.parametrize(
    "names",
    [
        [None, None],
        ["a0", "a0", "a0"],
        ["a1", None, "a2", "a1"],
        ["a3", "a0", "a1", "a2", None],
    ],
)
def test_every_path_matches_the_longhand_reference(setup, names, mode) -> None:
    folder, predictor, specs = setup
    x = torch.randn(len(names), SIZES[0])
    out, used = predictor.predict(x, names, mode)
    assert used == ("unmerged" if mode == "auto" else mode)
    assert_rows_match_reference(folder, x, out, names, specs)


def test_auto_uses_a_merged_copy_only_for_one_adapter_on_every_row(setup) -> None:
    folder, predictor, specs = setup
    assert not predictor.is_merged("a0")
    predictor.merge("a0")
    assert predictor.is_merged("a0")
    x = torch.randn(3, SIZES[0])
    out, used = predictor.predict(x, ["a0"] * 3, "auto")
    assert used == "merged"
    assert_rows_match_reference(folder, x, out, ["a0"] * 3, specs)
    assert predictor.predict(x, ["a0", None, "a0"], "auto")[1] == "unmerged"
    assert predictor.predict(x, ["a0", "a1", "a0"], "auto")[1] == "unmerged"
    assert predictor.predict(x, ["a1"] * 3, "auto")[1] == "unmerged"
    assert predictor.predict(x, ["a0"] * 3, "unmerged")[1] == "unmerged"


def test_a_merged_prediction_keeps_its_merged_copy(setup) -> None:
    _, predictor, _ = setup
    predictor.predict(torch.randn(3, SIZES[0]), ["a1", None, "a2"], "merged")
    assert predictor.is_merged("a1")
    assert predictor.is_merged("a2")
    assert not predictor.is_merged("a0")


def test_inputs_are_cast_to_the_base_dtype(setup) -> None:
    folder, predictor, specs = setup
    x = torch.randn(2, SIZES[0], dtype=torch.float64)
    for names in ([None, None], ["a0", "a0"], ["a0", "a1"]):
        out, _ = predictor.predict(x, names, "unmerged")
        assert_rows_match_reference(folder, x, out, names, specs)


def test_a_new_version_is_a_new_key_served_from_its_own_weights(setup) -> None:
    folder, predictor, specs = setup
    old = predictor.registry.get("a0").version
    predictor.merge(old)
    assert predictor.is_merged(old)
    specs["a0"] = upload(predictor.registry, "a0", rank=3, targets=("layer1",), seed=42)
    new = predictor.registry.get("a0").version
    assert new != old and not predictor.is_merged(new)
    assert predictor.choose("auto", predictor.resolve([new], "adapter"), [new]) == "unmerged"
    x = torch.randn(2, SIZES[0])
    for mode in ("auto", "merged"):
        out, _ = predictor.predict(x, [new, new], mode)
        assert_rows_match_reference(folder, x, out, ["a0", "a0"], specs)


def test_a_deleted_adapter_loses_its_merged_copy(setup) -> None:
    _, predictor, _ = setup
    version = predictor.registry.get("a0").version
    predictor.merge(version)
    predictor.registry.delete("a0")
    assert not predictor.is_merged(version)  # the registry told the cache at once


def test_an_unknown_adapter_is_not_found_on_the_named_field(setup) -> None:
    _, predictor, _ = setup
    with pytest.raises(AdapterNotFound) as info:
        predictor.predict(torch.randn(2, SIZES[0]), ["a0", "nope"], "auto", "adapters")
    assert info.value.status == 404 and info.value.param == "adapters"
    with pytest.raises(AdapterNotFound) as info:
        predictor.predict(torch.randn(1, SIZES[0]), ["nope"], "auto")
    assert info.value.param == "adapters"  # the default field
    with pytest.raises(AdapterNotFound) as info:
        predictor.merge("nope")
    assert info.value.param == "adapter"
    with pytest.raises(AdapterNotFound) as info:
        predictor.merge("nope", "adapters")
    assert info.value.param == "adapters"


def test_resolve_loads_each_named_adapter_once(setup) -> None:
    _, predictor, _ = setup
    loaded = predictor.resolve(["a1", None, "a1", "a0"], "adapters")
    assert list(loaded) == ["a1", "a0"]
    assert loaded["a1"][0].name == "a1"


def test_the_stack_is_reused_while_it_holds_the_batch_adapters(setup) -> None:
    folder, predictor, specs = setup
    x = torch.randn(4, SIZES[0])
    predictor.predict(x, ["a0", "a1", "a2", None], "unmerged")
    stack = predictor._stack
    assert stack is not None
    out, _ = predictor.predict(x, ["a2", None, "a0", "a2"], "unmerged")
    assert predictor._stack is stack
    predictor.predict(x, ["a2", "a1", "a0", None], "unmerged")  # exactly the same adapters
    assert predictor._stack is stack
    assert_rows_match_reference(folder, x, out, ["a2", None, "a0", "a2"], specs)


def test_a_new_stack_keeps_the_last_ones_adapters(setup) -> None:
    _, predictor, _ = setup
    x = torch.randn(2, SIZES[0])
    predictor.predict(x, ["a0", "a1"], "unmerged")
    predictor.predict(x, ["a2", None], "unmerged")
    assert predictor._stack.keys == {"a0", "a1", "a2"}


def test_two_versions_of_one_name_in_a_batch_each_get_their_own_weights(setup) -> None:
    folder, predictor, specs = setup
    first = predictor.registry.get("a0").version
    old_spec = specs["a0"]
    specs["a0"] = upload(predictor.registry, "a0", rank=2, targets=("layer2",), seed=7)
    specs[f"a0@{first}"] = old_spec
    rows = ["a0", f"a0@{first}", "a1", f"a0@{first[:12]}"]
    x = torch.randn(4, SIZES[0])
    out, _ = predictor.predict(x, rows, "unmerged")
    specs[f"a0@{first[:12]}"] = old_spec
    assert_rows_match_reference(folder, x, out, rows, specs)


def test_a_new_stack_past_the_cap_starts_afresh(setup, monkeypatch) -> None:
    _, predictor, _ = setup
    monkeypatch.setattr(predictor_module, "_MAX_STACK", 3)
    x = torch.randn(2, SIZES[0])
    predictor.predict(x, ["a0", "a1"], "unmerged")
    predictor.predict(x, ["a2", None], "unmerged")  # 3 adapters: kept
    assert predictor._stack.keys == {"a0", "a1", "a2"}
    predictor.predict(x, ["a3", None], "unmerged")  # 4 would pass the cap
    assert predictor._stack.keys == {"a3"}


def test_a_few_of_a_big_stacks_adapters_take_the_sorted_path_and_match(setup, monkeypatch) -> None:
    folder, predictor, specs = setup
    for i in range(4, 10):
        specs[f"a{i}"] = upload(predictor.registry, f"a{i}", rank=2, targets=TARGETS[i % 3], seed=i)
    x = torch.randn(12, SIZES[0])
    every = [f"a{i}" for i in range(10)] + [None, "a3"]
    out, _ = predictor.predict(x, every, "unmerged")  # stacks all ten
    assert_rows_match_reference(folder, x, out, every, specs)
    few = ["a7", None, "a2", "a7", "a2", None, "a7", "a2", None, "a2", "a7", "a7"]

    def unused(*args, **kwargs):
        raise AssertionError("two of ten stacked adapters should take the sorted path")

    monkeypatch.setattr(predictor_module.StackedBatch, "build", unused)
    out, _ = predictor.predict(x, few, "unmerged")
    assert len(predictor._stack.keys) == 10  # the big stack is kept for later batches
    assert_rows_match_reference(folder, x, out, few, specs)


def test_auto_asks_the_one_policy(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both of the predictor's `auto` decisions go through app.engine.policy: with a policy
    that never merges, a merged copy is not used and none is made."""
    _, predictor, _ = setup
    predictor.merge("a0")
    asked: list[tuple] = []

    def never(*args, **kwargs) -> bool:
        asked.append(args)
        return False

    monkeypatch.setattr(predictor_module, "runs_merged", never)
    assert predictor.predict(torch.randn(3, SIZES[0]), ["a0"] * 3, "auto")[1] == "unmerged"
    assert predictor.merges_due({"a1": 100}, 4) == []
    assert len(asked) == 2
