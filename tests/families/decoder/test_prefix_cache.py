"""Prefix caching through the routes: a hit answers as a miss, and an adapter's cached blocks
never serve another version (vLLM served stale blocks after a same-name reload, its issue
#42125) nor the base (SGLang let a base request reuse an adapter's blocks, its #24638)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings
from support.gen_helpers import reference, tiny_tokenizer, write_tiny_causal_lm, write_tuned_adapter

PROMPT = "LoRA adapters are low rank updates of a frozen model, served side by side"
NEW = 12


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_causal_lm(tmp_path_factory.mktemp("llama") / "tiny-llama")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": write_tuned_adapter(base_dir, root / "a"),
        "b": write_tuned_adapter(base_dir, root / "b", ("k_proj", "o_proj", "up_proj"), 0.8),
    }


@pytest.fixture
def client(tmp_path: Path, base_dir: Path) -> Iterator[TestClient]:
    settings = Settings(
        base_model=base_dir, adapters_dir=tmp_path / "a", data_dir=tmp_path / "d",
        device="cpu", kv_block_tokens=4,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        yield c


def upload(client: TestClient, name: str, folder: Path, overwrite: bool = False) -> None:
    files = {
        "config": ("c.json", (folder / "adapter_config.json").read_bytes()),
        "weights": ("w.safetensors", (folder / "adapter_model.safetensors").read_bytes()),
    }
    params = {"overwrite": "true"} if overwrite else {}
    answer = client.post("/v1/adapters", data={"name": name}, files=files, params=params)
    assert answer.status_code in (200, 201), answer.text


def hits(client: TestClient) -> float:
    text = client.get("/metrics").text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return samples["loraserve_prefix_cache_hits_total"]


def complete(client: TestClient, model: str) -> str:
    body = {"prompt": PROMPT, "max_tokens": NEW, "temperature": 0, "ignore_eos": True}
    answer = client.post("/v1/completions", json={**body, "model": model})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["choices"][0]["text"])


def expected(base_dir: Path, adapter: Path | None) -> str:
    ids = tiny_tokenizer()(PROMPT)["input_ids"]
    return tiny_tokenizer().decode(reference(base_dir, ids, adapter, NEW), skip_special_tokens=True)


def test_a_hit_answers_as_a_miss(client: TestClient, base_dir: Path, adapters) -> None:
    upload(client, "x", adapters["a"])
    for model in ("tiny-llama", "x"):
        before = hits(client)
        miss = complete(client, model)
        assert hits(client) == before
        assert complete(client, model) == miss
        assert hits(client) > before  # the second one found the first one's blocks
    assert miss == expected(base_dir, adapters["a"])


def test_an_overwritten_adapter_never_serves_the_old_versions_blocks(
    client: TestClient, base_dir: Path, adapters
) -> None:
    upload(client, "x", adapters["a"])
    old = complete(client, "x")
    upload(client, "x", adapters["b"], overwrite=True)
    before = hits(client)
    new = complete(client, "x")
    assert hits(client) == before
    assert new == expected(base_dir, adapters["b"]) != old


def test_the_base_never_reuses_an_adapters_blocks(
    client: TestClient, base_dir: Path, adapters
) -> None:
    upload(client, "x", adapters["a"])
    complete(client, "x")
    before = hits(client)
    assert complete(client, "tiny-llama") == expected(base_dir, None)
    assert hits(client) == before


def test_a_composition_reuses_its_own_blocks_and_no_others(client: TestClient, adapters) -> None:
    """Blocks are keyed by the composition's versions and scales: the same composition hits,
    another scale or the adapter alone does not."""
    upload(client, "x", adapters["a"])
    upload(client, "y", adapters["b"])

    def composed(scale: float) -> str:
        lora = [{"name": "x", "scale": scale}, {"name": "y", "scale": 0.5}]
        body = {"prompt": PROMPT, "max_tokens": NEW, "temperature": 0, "ignore_eos": True}
        answer = client.post("/v1/completions", json={**body, "lora": lora})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["choices"][0]["text"])

    first = composed(0.8)
    before = hits(client)
    assert composed(0.8) == first and hits(client) > before
    for other in (lambda: composed(0.3), lambda: complete(client, "x")):
        before = hits(client)
        other()
        assert hits(client) == before
