"""POST /v1/embeddings on the real all-MiniLM-L6-v2: OpenAI's wire format and client, per-input
adapters, and every bad input a clear 4xx that changes nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from peft import LoraConfig, get_peft_model
from transformers import AutoModel

from app.families.encoder.model import known_model_folder
from app.main import create_app
from app.settings import Settings

BASE = "all-MiniLM-L6-v2"
PAIR = ["A man is eating food.", "A man is eating a piece of bread."]
KEY = "embed-admin-key"


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes]]:
    folder = known_model_folder(BASE)
    files = {}
    for i, name in enumerate(["qv", "ffn"]):
        torch.manual_seed(i)
        targets = ["query", "value"] if name == "qv" else ["intermediate.dense", "output.dense"]
        model = AutoModel.from_pretrained(folder, local_files_only=True)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        out = tmp_path_factory.mktemp(name)
        get_peft_model(model, config).save_pretrained(out)
        files[name] = (
            (out / "adapter_config.json").read_bytes(),
            (out / "adapter_model.safetensors").read_bytes(),
        )
    return files


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, adapter_files) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("embeddings")
    settings = Settings(
        base_model=Path(BASE),
        adapters_dir=tmp / "adapters",
        data_dir=tmp / "data",
        device="cpu",
        max_request_rows=8,
        admin_keys=KEY,
    )
    with TestClient(create_app(settings), headers={"authorization": f"Bearer {KEY}"}) as c:
        for name, (config, weights) in adapter_files.items():
            files = {"config": ("c.json", config), "weights": ("w.safetensors", weights)}
            assert c.post("/v1/adapters", data={"name": name}, files=files).status_code == 201
        yield c


def embed(client: TestClient, **body) -> np.ndarray:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]])


def test_the_model_says_it_takes_texts(client: TestClient) -> None:
    model = client.get("/v1/model").json()
    assert model["name"] == BASE and model["family"] == "hf" and model["architecture"] == "bert"
    assert model["inputs"] == "texts" and model["task"] == "embedding"
    assert model["input_dim"] is None and model["output_dim"] == 384
    assert model["max_seq_length"] == 256
    names = [m["name"] for m in model["target_modules"]]
    assert "encoder.layer.5.attention.self.value" in names


def test_openai_wire_format(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": BASE, "input": PAIR})
    assert response.status_code == 200
    assert "model;dur=" in response.headers["server-timing"]
    body = response.json()
    assert body["object"] == "list" and body["model"] == BASE
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    e = np.array([d["embedding"] for d in body["data"]])
    assert float(e[0] @ e[1]) == pytest.approx(0.755, abs=0.005)
    # [CLS] a man is eating food . [SEP] is 8 tokens; the second text 11.
    assert body["usage"] == {"prompt_tokens": 19, "total_tokens": 19}


def test_one_string_and_base64_give_the_same_floats(client: TestClient) -> None:
    floats = embed(client, model="qv", input=PAIR[0])
    response = client.post(
        "/v1/embeddings", json={"model": "qv", "input": PAIR[0], "encoding_format": "base64"}
    )
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), floats[0].astype(np.float32))


def test_per_input_adapters_equal_each_input_alone(client: TestClient) -> None:
    texts = [*PAIR, "Cats purr.", "Stock markets fell sharply on Monday."]
    names = ["qv", None, "ffn", "qv"]
    mixed = embed(client, model=BASE, input=texts, adapters=names)
    for i, (text, name) in enumerate(zip(texts, names, strict=True)):
        alone = embed(client, model=name or BASE, input=[text])
        assert np.abs(mixed[i] - alone[0]).max() <= 1e-5
    assert np.abs(mixed[0] - embed(client, model=BASE, input=[texts[0]])[0]).max() > 1e-3


def test_merged_and_unmerged_give_the_same_embeddings(client: TestClient) -> None:
    """Our `mode` extension, as /v1/predict has it; the answer says which mode ran."""
    answers = {}
    for mode in ("unmerged", "merged", "auto"):
        response = client.post("/v1/embeddings", json={"model": "qv", "input": PAIR, "mode": mode})
        assert response.status_code == 200, response.text
        body = response.json()
        if mode != "auto":
            assert body["mode"] == mode
        answers[mode] = np.array([d["embedding"] for d in body["data"]])
    assert np.abs(answers["merged"] - answers["unmerged"]).max() <= 1e-5
    assert np.abs(answers["auto"] - answers["unmerged"]).max() <= 1e-5
    assert np.abs(answers["merged"] - embed(client, model=BASE, input=PAIR)).max() > 1e-3


def test_the_openai_client_works_unchanged(client: TestClient) -> None:
    oa = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=KEY, http_client=client)
    result = oa.embeddings.create(model="qv", input=PAIR)  # the client asks for base64
    got = np.array([d.embedding for d in result.data])
    assert np.abs(got - embed(client, model="qv", input=PAIR)).max() <= 1e-6
    assert result.usage.prompt_tokens == 19
    wrong = openai.OpenAI(
        base_url=f"{client.base_url}/v1", api_key="wrong", http_client=client, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model=BASE, input="x")


def test_the_openai_client_works_without_keys_too(tmp_path: Path) -> None:
    settings = Settings(
        base_model=Path(BASE), adapters_dir=tmp_path / "a", data_dir=tmp_path / "d", device="cpu"
    )
    with TestClient(create_app(settings)) as open_client:
        # The client insists on some api_key; a service without keys ignores it.
        oa = openai.OpenAI(
            base_url=f"{open_client.base_url}/v1", api_key="unused", http_client=open_client
        )
        result = oa.embeddings.create(model=BASE, input=PAIR, encoding_format="float")
    got = np.array([d.embedding for d in result.data])
    assert got.shape == (2, 384) and float(got[0] @ got[1]) == pytest.approx(0.755, abs=0.005)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": BASE, "input": []}, 422, "invalid_input", "input"),
        ({"model": BASE, "input": ["ok", ""]}, 422, "invalid_input", "input"),
        ({"model": BASE, "input": ["t"] * 9}, 422, "invalid_input", "input"),
        ({"model": "nope", "input": "x"}, 404, "adapter_not_found", "model"),
        ({"model": "../x", "input": "x"}, 422, "invalid_name", "model"),
        (
            {"model": BASE, "input": ["a", "b"], "adapters": ["qv"]},
            422,
            "invalid_input",
            "adapters",
        ),
        ({"model": "qv", "input": ["a"], "adapters": ["qv"]}, 422, "invalid_input", "adapters"),
        ({"model": BASE, "input": [1, 2]}, 422, "invalid_input", None),
        ({"model": BASE, "input": "x", "dimensions": 128}, 422, "invalid_input", "dimensions"),
        ({"model": BASE, "input": "x", "encoding_format": "int8"}, 422, "invalid_input", None),
        ({"model": BASE, "input": "x", "extra": 1}, 422, "invalid_input", None),
        ({"model": BASE, "input": "x", "mode": "fused"}, 422, "invalid_input", None),
    ],
)
def test_bad_input_is_a_clear_4xx(client: TestClient, body, status, code, param) -> None:
    listed = client.get("/v1/adapters").json()
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if param is not None:
        assert error["param"] == param
    assert client.get("/v1/adapters").json() == listed


def test_vectors_are_refused_on_a_text_base(client: TestClient) -> None:
    response = client.post("/v1/predict", json={"inputs": [[1.0, 2.0]]})
    assert response.status_code == 422
    assert "/v1/embeddings" in response.json()["error"]["message"]
    response = client.post("/v1/datasets", json={"inputs": [[1.0]], "targets": [[1.0]]})
    assert response.status_code == 422 and "anchor" in response.json()["error"]["message"]
    assert client.get("/v1/datasets").json()["data"] == []


def test_model_may_be_left_out_for_the_base(client: TestClient) -> None:
    """Our extension (the openai client always sends `model`): no model is the base model."""
    without = client.post("/v1/embeddings", json={"input": PAIR}).json()
    named = client.post("/v1/embeddings", json={"input": PAIR, "model": BASE}).json()
    assert without["model"] == BASE and without["data"] == named["data"]


def test_texts_are_refused_on_a_vector_base(tmp_path: Path) -> None:
    from support.helpers import write_base_model

    settings = Settings(
        base_model=write_base_model(tmp_path / "base"),
        adapters_dir=tmp_path / "adapters",
        data_dir=tmp_path / "data",
        device="cpu",
    )
    with TestClient(create_app(settings)) as c:
        response = c.post("/v1/embeddings", json={"model": "base", "input": "x"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and "/v1/predict" in error["message"]


def test_a_composition_equals_peft_add_weighted_adapter_cat(
    client: TestClient, adapter_files, tmp_path: Path
) -> None:
    """`lora`: the composition of every input, against PEFT's own model with the sources
    combined by add_weighted_adapter(combination_type="cat"), pooled as the service pools."""
    from peft import PeftModel

    from app.families import load_family

    folder = known_model_folder(BASE)
    for name, (config, weights) in adapter_files.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_bytes(config)
        (tmp_path / name / "adapter_model.safetensors").write_bytes(weights)
    model = PeftModel.from_pretrained(
        AutoModel.from_pretrained(folder, local_files_only=True), tmp_path / "qv", adapter_name="qv"
    )
    model.load_adapter(tmp_path / "ffn", adapter_name="ffn")
    model.add_weighted_adapter(["qv", "ffn"], [0.5, -1.5], "mix", combination_type="cat")
    model.set_adapter("mix")
    encoder = load_family(Path(BASE), torch.device("cpu")).text  # type: ignore[attr-defined]
    texts = [*PAIR, "Cats purr."]
    with torch.no_grad():
        expected = encoder.embed(model.eval(), encoder.tokenize(texts)).numpy()
    lora = [{"name": "qv", "scale": 0.5}, {"name": "ffn", "scale": -1.5}]
    got = embed(client, model=BASE, input=texts, lora=lora)
    assert np.abs(got - expected).max() <= 1e-5
    per_input = embed(client, input=texts, adapters=[lora, None, "qv"])
    assert np.abs(per_input[0] - got[0]).max() <= 1e-5
    assert np.abs(per_input[1] - embed(client, input=[texts[1]])[0]).max() <= 1e-5
    assert np.abs(per_input[2] - embed(client, model="qv", input=[texts[2]])[0]).max() <= 1e-5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "qv", "lora": [{"name": "ffn"}]}, "lora"),
        ({"lora": [{"name": "ffn"}], "adapters": ["qv", "qv"]}, "lora"),
        ({"lora": [{"name": "ffn", "scale": 1.0}] * 9}, "lora"),
        ({"lora": [{"name": "nope"}]}, "lora"),
        ({"adapters": [[{"name": "qv"}], [{"name": "nope"}]]}, "adapters"),
    ],
)
def test_a_bad_composition_is_refused(client: TestClient, body, param) -> None:
    r = client.post("/v1/embeddings", json={"input": PAIR, **body})
    assert r.status_code in (404, 422), r.text
    assert r.json()["error"]["param"] == param
