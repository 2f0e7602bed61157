"""A service in bf16 (DTYPE=bfloat16) on a tiny Llama and a tiny BERT: it says so, generates,
serves a mixed batch as each row alone, holds adapters in bf16, and trains adapters in fp32."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.chats import ROWS, answer, upload
from support.gen_helpers import write_tiny_causal_lm, write_tuned_adapter
from support.helpers import write_tiny_text_model
from support.training import create, wait_for

PROMPTS = ["The capital of France is", "LoRA adapters are", "0 1 2 3", "Hello world, how"]
NEW = 12


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_causal_lm(tmp_path_factory.mktemp("llama") / "tiny-llama", seed=1)


def start(base: Path, tmp: Path, dtype: str = "bfloat16") -> TestClient:
    settings = Settings(
        base_model=base, adapters_dir=tmp / "adapters", data_dir=tmp / "data", device="cpu",
        dtype=dtype, max_dataset_rows=20,
    )  # fmt: skip
    return TestClient(create_app(settings))


def add_adapter(client: TestClient, name: str, folder: Path) -> None:
    files = {
        "config": ("c.json", (folder / "adapter_config.json").read_bytes()),
        "weights": ("w.safetensors", (folder / "adapter_model.safetensors").read_bytes()),
    }
    response = client.post("/v1/adapters", data={"name": name}, files=files)
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def client(llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("bf16")
    with start(llama, tmp) as c:
        add_adapter(c, "qvd", write_tuned_adapter(llama, tmp / "qvd"))
        add_adapter(c, "mlp", write_tuned_adapter(llama, tmp / "mlp", ("gate_proj", "up_proj")))
        yield c


def complete(client: TestClient, model: str, prompt: str) -> list[str]:
    """The greedy answer's tokens (as text), always NEW of them."""
    return [t for t, _, _ in scored(client, model, prompt)]


def scored(client: TestClient, model: str, prompt: str) -> list[tuple[str, float, float]]:
    """Each greedy token (as text), its logprob, and its lead over the runner-up."""
    body = {"model": model, "prompt": prompt, "max_tokens": NEW, "temperature": 0,
            "logprobs": 2, "ignore_eos": True}  # fmt: skip
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    leads = [min(top.values()) for top in lp["top_logprobs"]]
    return [
        (t, p, p - r) for t, p, r in zip(lp["tokens"], lp["token_logprobs"], leads, strict=True)
    ]


def test_the_model_says_bfloat16_and_completes(client: TestClient) -> None:
    model = client.get("/v1/model").json()
    assert (model["dtype"], model["family"]) == ("bfloat16", "causal_lm")
    services = client.app.state.services  # type: ignore[attr-defined]
    assert {p.dtype for p in services.base.module.parameters()} == {torch.bfloat16}
    body = {"model": model["name"], "prompt": PROMPTS[0], "max_tokens": NEW, "temperature": 0}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1
    base, adapted = (complete(client, m, PROMPTS[0]) for m in (model["name"], "qvd"))
    assert len(base) == NEW and base != adapted  # the bf16 adapter changes the answer
    # The adapters it serves are held in the base's dtype.
    version = services.registry.resolve("qvd", "model").version
    _, adapter = services.registry.load(version)
    assert {m.lora_A.dtype for m in adapter.modules.values()} == {torch.bfloat16}


# Two bf16 steps of a logit near 4 (8 significant bits): a batch's padded attention rounds
# differently from a sequence's own, so a row's logits may move by about one step.
TOLERANCE = 0.125


def test_a_mixed_bf16_batch_serves_each_row_as_alone(client: TestClient) -> None:
    """Row for row, the same tokens with the same logprobs (within bf16's rounding); a row may
    part from its answer alone only where two tokens were tied within that rounding."""
    name = client.get("/v1/model").json()["name"]
    jobs = [(m, p) for p in PROMPTS for m in (name, "qvd", "mlp")]
    generation = client.app.state.services.generation  # type: ignore[attr-defined]
    alone = [scored(client, m, p) for m, p in jobs]
    steps = generation.steps
    together: list[list[tuple[str, float, float]]] = [[] for _ in jobs]
    barrier = threading.Barrier(len(jobs))

    def send(i: int) -> None:
        barrier.wait()
        together[i] = scored(client, *jobs[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert generation.steps - steps < len(jobs) * NEW  # the sequences did share steps
    same = 0
    for job, one, mixed in zip(jobs, alone, together, strict=True):
        assert len(mixed) == NEW, job
        for k, ((token, lp, lead), (token_mixed, lp_mixed, _)) in enumerate(
            zip(one, mixed, strict=True)
        ):
            if token != token_mixed:  # a tie within rounding: past it, the texts differ
                assert lead <= TOLERANCE, (job, k, lead)
                break
            assert abs(lp - lp_mixed) <= TOLERANCE, (job, k, lp, lp_mixed)
            same += 1
    assert same >= len(jobs) * NEW * 3 // 4, same  # the rule is the common case, not ties


def test_an_sft_job_on_a_bf16_base_teaches_the_answers(llama: Path, tmp_path: Path) -> None:
    with start(llama, tmp_path) as client:
        assert client.get("/v1/model").json()["dtype"] == "bfloat16"
        data = upload(client, ROWS)
        hp = {"rank": 8, "alpha": 16, "epochs": 30, "batch_size": 4, "learning_rate": 2e-2,
              "seed": 1, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]}  # fmt: skip
        job = create(client, "taught", data, validation_dataset=data, hyperparameters=hp).json()
        done = wait_for(client, job["id"], "succeeded", "failed", timeout=120)
        assert done["status"] == "succeeded", done["error"]
        assert done["progress"]["validation_exact_match"] == 1.0
        references = [
            r["messages"][-1]["content"] if "messages" in r else r["completion"] for r in ROWS
        ]
        assert [answer(client, "taught", r) for r in ROWS] == references


def test_a_contrastive_job_on_a_bf16_text_base_learns(tmp_path: Path) -> None:
    pairs = [{"anchor": f"zovob {w}", "positive": f"a red {w}"} for w in
             ("chair", "table", "lamp", "door", "cup", "book", "shoe", "coat")]  # fmt: skip
    with start(write_tiny_text_model(tmp_path / "bert"), tmp_path) as client:
        assert client.get("/v1/model").json()["dtype"] == "bfloat16"
        data = "\n".join(json.dumps(p) for p in pairs).encode()
        response = client.post("/v1/datasets", files={"file": ("pairs.jsonl", data)})
        assert response.status_code == 201, response.text
        hp = {"epochs": 20, "batch_size": 8, "learning_rate": 1e-2, "rank": 8}
        train = response.json()["id"]
        job = create(client, "j", train, validation_dataset=train, hyperparameters=hp).json()
        done = wait_for(client, job["id"], "succeeded", "failed", timeout=120)
        assert done["status"] == "succeeded", done["error"]
        events = client.get(f"/v1/fine-tuning/jobs/{job['id']}/events").json()["data"]
        losses = [e["data"]["validation_loss"] for e in events if e["type"] == "metrics"]
        assert losses[-1] < losses[0] / 2
        # A mixed batch (the adapter on every other text) embeds each text exactly as alone.
        base = client.get("/v1/model").json()["name"]
        texts = [p["anchor"] for p in pairs]
        names = ["j" if i % 2 else None for i in range(len(texts))]
        body = {"model": base, "input": texts, "adapters": names}
        mixed = client.post("/v1/embeddings", json=body)
        assert mixed.status_code == 200, mixed.text
        for text, name, row in zip(texts, names, mixed.json()["data"], strict=True):
            one = {"model": name or base, "input": [text]}
            alone = client.post("/v1/embeddings", json=one).json()["data"][0]["embedding"]
            assert row["embedding"] == alone, (text, name)
