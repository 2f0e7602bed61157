"""The OpenAI generation routes on a tiny Llama: answers, streams, stops, usage, bad input."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.gen_helpers import reference, tiny_tokenizer, write_tiny_causal_lm, write_tuned_adapter

KEY = "gen-admin-key"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_causal_lm(tmp_path_factory.mktemp("llama") / "tiny-llama")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Path:
    return write_tuned_adapter(base_dir, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, base_dir: Path, adapter_dir: Path
) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("gen")
    settings = Settings(
        base_model=base_dir,
        adapters_dir=tmp / "adapters",
        data_dir=tmp / "data",
        device="cpu",
        admin_keys=KEY,
    )
    with TestClient(create_app(settings), headers={"authorization": f"Bearer {KEY}"}) as c:
        files = {
            "config": ("c.json", (adapter_dir / "adapter_config.json").read_bytes()),
            "weights": ("w.safetensors", (adapter_dir / "adapter_model.safetensors").read_bytes()),
        }
        assert c.post("/v1/adapters", data={"name": "qvd"}, files=files).status_code == 201
        yield c


def chat(client: TestClient, **body) -> dict:
    answer = client.post("/v1/chat/completions", json={"messages": HELLO, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_model_says_it_generates(client: TestClient) -> None:
    model = client.get("/v1/model").json()
    assert (model["family"], model["task"], model["chat_template"]) == (
        "causal_lm",
        "generation",
        True,
    )
    assert model["context_length"] == 256 and model["vocab_size"] == len(tiny_tokenizer())
    names = [m["name"] for m in model["target_modules"]]
    assert "lm_head" not in names and "model.layers.0.mlp.down_proj" in names


def test_models_lists_the_base_and_its_adapters(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    by_id = {m["id"]: m for m in listed["data"]}
    assert by_id["tiny-llama"]["parent"] is None
    assert by_id["qvd"]["parent"] == "tiny-llama" and by_id["qvd"]["object"] == "model"


@pytest.mark.parametrize("adapter", [None, "qvd"])
def test_greedy_answers_equal_transformers_and_peft(
    client: TestClient, base_dir: Path, adapter_dir: Path, adapter: str | None
) -> None:
    prompt = "The capital of France"
    ids = tiny_tokenizer()(prompt)["input_ids"]
    body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
            "logprobs": 0, "model": adapter or "tiny-llama"}  # fmt: skip
    got = client.post("/v1/completions", json=body).json()
    want = reference(base_dir, ids, adapter_dir if adapter else None, 24)
    # A random tiny model emits partial UTF-8 bytes, so the whole text is compared, not its pieces.
    assert got["choices"][0]["text"] == tiny_tokenizer().decode(want, skip_special_tokens=True)
    assert len(got["choices"][0]["logprobs"]["tokens"]) == 24
    assert got["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 24,
        "total_tokens": len(ids) + 24,
    }
    assert got["choices"][0]["finish_reason"] == "length"


def test_the_adapter_changes_the_answer(client: TestClient) -> None:
    base = chat(client, temperature=0, max_tokens=16, ignore_eos=True)
    tuned = chat(client, model="qvd", temperature=0, max_tokens=16, ignore_eos=True)
    assert base["choices"][0]["message"]["content"] != tuned["choices"][0]["message"]["content"]


def stream_events(client: TestClient, path: str, body: dict) -> list:
    with client.stream("POST", path, json={**body, "stream": True}) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in answer.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


@pytest.mark.parametrize("model", ["tiny-llama", "qvd"])
def test_streamed_chunks_join_to_the_answer(client: TestClient, model: str) -> None:
    body = {"model": model, "messages": HELLO, "temperature": 0, "max_tokens": 20,
            "stream_options": {"include_usage": True}}  # fmt: skip
    whole = chat(client, **body)
    events = stream_events(client, "/v1/chat/completions", body)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finish = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finish[-1] == whole["choices"][0]["finish_reason"] and set(finish[:-1]) == {None}
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]


def test_usage_counts_the_tokenizers_tokens(client: TestClient) -> None:
    got = chat(client, temperature=0, max_tokens=10, ignore_eos=True)
    tok = tiny_tokenizer()
    prompt = tok.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    assert got["usage"]["prompt_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert got["usage"]["completion_tokens"] == 10


def test_a_stop_string_cuts_the_answer_before_it(client: TestClient) -> None:
    full = chat(client, temperature=0, max_tokens=24, ignore_eos=True)["choices"][0]["message"][
        "content"
    ]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip() and stop in full
    got = chat(client, temperature=0, max_tokens=24, ignore_eos=True, stop=[stop])
    assert got["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert got["choices"][0]["finish_reason"] == "stop"
    events = stream_events(client, "/v1/chat/completions", {"messages": HELLO, "temperature": 0,
                           "max_tokens": 24, "ignore_eos": True, "stop": stop})  # fmt: skip
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == full[: full.index(stop)]


def test_n_choices_and_a_seed_repeat(client: TestClient) -> None:
    body = {"prompt": ["Hello", "The quick"], "n": 2, "max_tokens": 8, "seed": 11,
            "temperature": 1.0, "top_p": 0.9, "top_k": 50}  # fmt: skip
    first = client.post("/v1/completions", json=body).json()
    second = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in second["choices"]]


def test_the_openai_client_works_unchanged(client: TestClient) -> None:
    oa = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=KEY, http_client=client)
    whole = oa.chat.completions.create(model="qvd", messages=HELLO, temperature=0, max_tokens=12)
    parts = [
        c.choices[0].delta.content or ""
        for c in oa.chat.completions.create(
            model="qvd", messages=HELLO, temperature=0, max_tokens=12, stream=True
        )
        if c.choices
    ]
    assert "".join(parts) == whole.choices[0].message.content
    done = oa.completions.create(model="tiny-llama", prompt="Hello", max_tokens=5, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 5
    assert [m.id for m in oa.models.list()] == ["tiny-llama", "qvd"]


LONG = "word " * 300


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": HELLO}, 404, "model"),
        ("/v1/chat/completions", {"messages": []}, 422, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "tool", "content": "x"}]},
            422,
            "messages.0.role",
        ),
        ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 0}, 422, "max_tokens"),
        ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 10_000}, 422, "max_tokens"),
        ("/v1/chat/completions", {"messages": HELLO, "temperature": -0.5}, 422, "temperature"),
        ("/v1/chat/completions", {"messages": HELLO, "top_p": 0}, 422, "top_p"),
        ("/v1/chat/completions", {"messages": HELLO, "top_p": 1.5}, 422, "top_p"),
        ("/v1/chat/completions", {"messages": HELLO, "n": 100}, 422, "n"),
        ("/v1/chat/completions", {"messages": HELLO, "tools": []}, 422, "tools"),
        (
            "/v1/chat/completions",
            {"messages": HELLO, "response_format": {"type": "xml"}},
            422,
            "response_format.type",
        ),
        ("/v1/chat/completions", {"messages": HELLO, "logit_bias": {"1": 2}}, 422, "logit_bias"),
        (
            "/v1/chat/completions",
            {"messages": HELLO, "presence_penalty": 0.5},
            422,
            "presence_penalty",
        ),
        ("/v1/completions", {"prompt": LONG}, 422, "prompt"),
        ("/v1/completions", {"prompt": "x", "stop": [""]}, 422, "stop"),
        ("/v1/completions", {"prompt": "x", "seed": 2**63}, 422, "seed"),
        ("/v1/completions", {"prompt": "x", "seed": 2**63 - 2, "n": 4}, 422, "seed"),
        ("/v1/chat/completions", {"messages": HELLO, "seed": -(2**63) - 1}, 422, "seed"),
        ("/v1/completions", {"prompt": ["x"] * 10, "n": 16, "max_tokens": 1}, 422, "n"),
    ],
)
def test_bad_input_is_a_clear_4xx(client: TestClient, path, body, status, param) -> None:
    answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param
    assert client.get("/v1/models").json()["data"][1]["id"] == "qvd"  # nothing changed


def test_chat_needs_a_chat_template(tmp_path: Path) -> None:
    folder = write_tiny_causal_lm(tmp_path / "plain", chat_template=False)
    settings = Settings(
        base_model=folder, adapters_dir=tmp_path / "a", data_dir=tmp_path / "d", device="cpu"
    )
    with TestClient(create_app(settings)) as c:
        answer = c.post("/v1/chat/completions", json={"messages": HELLO})
        assert answer.status_code == 422 and answer.json()["error"]["param"] == "messages"
        assert "/v1/completions" in answer.json()["error"]["message"]
        assert (
            c.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2}).status_code == 200
        )


def test_generation_is_refused_on_a_vector_base(client: TestClient, tmp_path: Path) -> None:
    from support.helpers import write_base_model

    settings = Settings(base_model=write_base_model(tmp_path / "mlp"), adapters_dir=tmp_path / "a",
                        data_dir=tmp_path / "d", device="cpu")  # fmt: skip
    with TestClient(create_app(settings)) as c:
        answer = c.post("/v1/chat/completions", json={"messages": HELLO})
        assert answer.status_code == 422 and "/v1/predict" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/embeddings", {"input": "Hello"}), ("/v1/predict", {"inputs": [[1.0, 2.0]]})],
)
def test_vector_and_embedding_routes_point_a_decoder_to_generation(
    client: TestClient, path: str, body: dict
) -> None:
    answer = client.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert "/v1/chat/completions" in answer.json()["error"]["message"]


def _metrics(client: TestClient) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_count_sequences_tokens_and_the_kv_cache(client: TestClient) -> None:
    before = _metrics(client)
    body = {"prompt": "The capital of France is", "max_tokens": 5, "ignore_eos": True}
    answer = client.post("/v1/completions", json={"model": "qvd", **body, "temperature": 0})
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    after = _metrics(client)
    delta = lambda name: after[name] - before.get(name, 0.0)  # noqa: E731
    assert delta("loraserve_generation_tokens_total") == usage["completion_tokens"] == 5
    assert delta("loraserve_prompt_tokens_total") == usage["prompt_tokens"]
    # The prompt is one prefill step; each later token is a decode step of its own.
    assert delta("loraserve_generation_steps_total") == 5
    # The engine drops a finished sequence from its batch just after sending the last event.
    for _ in range(100):
        if after["loraserve_generation_running"] == 0:
            break
        time.sleep(0.02)
        after = _metrics(client)
    assert after["loraserve_generation_running"] == after["loraserve_generation_waiting"] == 0
    assert after["loraserve_kv_cache_budget_bytes"] == Settings().kv_cache_bytes
    assert 0 <= after["loraserve_kv_cache_bytes"] <= after["loraserve_kv_cache_budget_bytes"]
