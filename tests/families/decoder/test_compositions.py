"""`lora` on the OpenAI routes: a composition of adapters for a request's sequences, its greedy
tokens equal to PEFT's own model with the sources combined by add_weighted_adapter("cat"), in
one continuous batch beside sequences on single adapters and on the base."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.gen_helpers import tiny_tokenizer, write_tiny_causal_lm, write_tuned_adapter

PROMPT = "The capital of France is"
NEW = 12
LORA = [{"name": "qv", "scale": 0.7}, {"name": "down", "scale": -1.3}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compose-gen")
    base = write_tiny_causal_lm(root / "base")
    return {
        "base": base,
        "qv": write_tuned_adapter(base, root / "qv", ("q_proj", "v_proj")),
        "down": write_tuned_adapter(base, root / "down", ("down_proj", "up_proj"), b_std=0.3),
    }


@pytest.fixture(scope="module")
def client(tmp_path_factory, folders) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("svc")
    settings = Settings(
        base_model=folders["base"], adapters_dir=tmp / "a", data_dir=tmp / "d", device="cpu"
    )
    with TestClient(create_app(settings)) as c:
        for name in ("qv", "down"):
            files = {
                "config": ("c.json", (folders[name] / "adapter_config.json").read_bytes()),
                "weights": ("w.st", (folders[name] / "adapter_model.safetensors").read_bytes()),
            }
            assert c.post("/v1/adapters", data={"name": name}, files=files).status_code == 201
        yield c


def _peft_text(folders: dict[str, Path], lora: list[dict] | None, name: str | None) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folders["base"])
    ids = tiny_tokenizer()(PROMPT)["input_ids"]
    if lora is not None or name is not None:
        model = PeftModel.from_pretrained(model, folders["qv"], adapter_name="qv")
        model.load_adapter(folders["down"], adapter_name="down")
        if lora is not None:
            names, weights = [e["name"] for e in lora], [e["scale"] for e in lora]
            model.add_weighted_adapter(names, weights, "mix", combination_type="cat")
            name = "mix"
        model.set_adapter(name)
    out = model.eval().generate(
        torch.tensor([ids]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False
    )
    return tiny_tokenizer().decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)


def _text(client: TestClient, **body) -> str:
    r = client.post(
        "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": NEW, "temperature": 0, "ignore_eos": True, **body},
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_a_composition_equals_peft_cat(client: TestClient, folders) -> None:
    ours = _text(client, lora=LORA)
    assert ours == _peft_text(folders, LORA, None)
    assert ours != _peft_text(folders, None, "qv")  # the composition really is another model


def test_compositions_beside_adapters_and_the_base_each_get_their_own(client, folders) -> None:
    asks = [{"lora": LORA}, {"model": "qv"}, {}, {"lora": [{"name": "qv", "scale": 0.5}]}] * 2
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        got[i] = _text(client, **asks[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, body in enumerate(asks):
        assert got[i] == _text(client, **body), body
    assert got[0] == _peft_text(folders, LORA, None)
    assert got[1] == _peft_text(folders, None, "qv")


def test_metrics_count_each_composed_adapters_requests_and_tokens(client: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def counted() -> dict[tuple[str, str], float]:
        text = client.get("/metrics").text
        return {
            (s.name, s.labels.get("adapter", "")): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name.startswith("loraserve_adapter_")
        }

    before = counted()
    _text(client, lora=LORA)
    after = counted()
    for name in ("qv", "down"):
        key = ("loraserve_adapter_requests_total", name)
        assert after[key] - before.get(key, 0) == 1
        tokens = ("loraserve_adapter_tokens_total", name)
        prompt = len(tiny_tokenizer()(PROMPT)["input_ids"])
        assert after[tokens] - before.get(tokens, 0) == prompt + NEW


def test_scale_one_is_the_adapter(client: TestClient) -> None:
    assert _text(client, lora=[{"name": "qv", "scale": 1.0}]) == _text(client, model="qv")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "qv", "lora": LORA}, 422),
        ({"lora": [{"name": "nope"}]}, 404),
        ({"lora": [{"name": "qv", "scale": 99}]}, 422),
        ({"lora": [{"name": "qv"}] * 9}, 422),
    ],
)
def test_a_bad_lora_is_refused(client: TestClient, body, status) -> None:
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], **body}
    )
    assert r.status_code == status, r.text
