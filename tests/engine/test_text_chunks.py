"""Text batches on the CPU go through sorted by length, in chunks: every text still gets its own
adapter (or none), merged or not, and comes back in its place, as if it ran alone."""

from __future__ import annotations

import random

import pytest
import torch

import app.engine.predictor as predictor_module
from app.adapters import BaseInfo
from app.adapters.peft_format import tensor_key
from app.engine import Predictor
from app.families import Family, load_family
from support.helpers import RegistryByName, adapter_files, peft_config, write_tiny_text_model

TARGETS = ("query", "value", "output.dense")


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    tmp = tmp_path_factory.mktemp("chunks")
    return load_family(write_tiny_text_model(tmp / "base"), torch.device("cpu"))


@pytest.fixture(scope="module")
def predictor(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    tmp = tmp_path_factory.mktemp("chunks")
    base = family.base
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    info = BaseInfo(linears, base.name, base.fingerprint, base.device, base.dtype)
    registry = RegistryByName.local(tmp / "adapters", info, 64, 1 << 30)
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        tensors = {}
        for name, (n_in, n_out) in linears.items():
            if name.endswith(TARGETS):
                tensors[tensor_key(name, "lora_A")] = torch.randn(4, n_in, generator=gen)
                tensors[tensor_key(name, "lora_B")] = torch.randn(n_out, 4, generator=gen)
        registry.upload(f"a{i}", *adapter_files(peft_config(4, 8, list(TARGETS)), tensors))
    return Predictor(base, registry, 1 << 30)


def texts(n: int) -> list[str]:
    rng = random.Random(n)
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "it", "rained", "over", "towns"]
    return [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(n)]


@pytest.mark.parametrize("used", ["unmerged", "merged"])
def test_chunked_texts_match_each_text_alone(
    predictor: Predictor, family: Family, monkeypatch, used
) -> None:
    monkeypatch.setattr(predictor_module, "CPU_CHUNK_TOKENS", 64)  # many ragged chunks
    batch = texts(40)
    rng = random.Random(1)
    names = [rng.choice([None, "a0", "a1", "a2"]) for _ in batch]
    encoder = family.text  # type: ignore[attr-defined]
    assert encoder is not None
    tokens = encoder.tokenize(batch)
    assert len(batch) * tokens.width > 64
    loaded = predictor.resolve(names, "adapters")
    together = predictor.forward(tokens, names, loaded, used)
    for i, (text, name) in enumerate(zip(batch, names, strict=True)):
        one = predictor.resolve([name], "adapters")
        alone = predictor.forward(encoder.tokenize([text]), [name], one, used)
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_a_text_longer_than_a_chunk_goes_alone(
    predictor: Predictor, family: Family, monkeypatch
) -> None:
    monkeypatch.setattr(predictor_module, "CPU_CHUNK_TOKENS", 4)
    batch = texts(5)
    encoder = family.text  # type: ignore[attr-defined]
    assert encoder is not None
    out = predictor.forward(
        encoder.tokenize(batch), ["a1"] * 5, predictor.resolve(["a1"], "a"), "unmerged"
    )
    for i, text in enumerate(batch):
        alone = predictor.forward(
            encoder.tokenize([text]), ["a1"], predictor.resolve(["a1"], "a"), "unmerged"
        )
        torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_a_chunk_only_loads_its_own_adapters(
    predictor: Predictor, family: Family, monkeypatch
) -> None:
    """Two texts on two adapters, too long to share a chunk: each chunk holds one adapter, so
    it takes the one-adapter path, never the mixed one."""
    monkeypatch.setattr(predictor_module, "CPU_CHUNK_TOKENS", 8)
    encoder = family.text  # type: ignore[attr-defined]
    assert encoder is not None
    tokens = encoder.tokenize(["short", "a somewhat longer text than that"])
    assert tokens.width == 8
    calls: list[int] = []
    monkeypatch.setattr(Predictor, "_segmented", lambda self, *a: calls.append(1))
    out = predictor.forward(tokens, ["a0", "a1"], predictor.resolve(["a0", "a1"], "a"), "unmerged")
    assert calls == [] and out.shape == (2, 32)
