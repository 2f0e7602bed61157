"""Structured outputs on a tiny decoder (random weights: whatever it says, the constraint makes it
say something valid): JSON under generated schemas, any JSON object, a regex, a choice, an EBNF
grammar; greedy and sampled, streamed and not, n > 1, in one batch beside free sequences on
other adapters; bad constraints are 422s naming their field."""

from __future__ import annotations

import json
import math
import random
import re
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from support.gen_helpers import write_tiny_causal_lm, write_tuned_adapter

NEW = 160
DEEP: dict = {}
for _ in range(30):  # 30 levels of objects, past MAX_SCHEMA_DEPTH
    DEEP = {"type": "object", "properties": {"x": DEEP}}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("structured")
    base = write_tiny_causal_lm(root / "base")
    adapter = write_tuned_adapter(base, root / "qv", ("q_proj", "v_proj"))
    settings = Settings(base_model=base, adapters_dir=root / "a", data_dir=root / "d", device="cpu")
    with TestClient(create_app(settings)) as c:
        files = {
            "config": ("c.json", (adapter / "adapter_config.json").read_bytes()),
            "weights": ("w.st", (adapter / "adapter_model.safetensors").read_bytes()),
        }
        assert c.post("/v1/adapters", data={"name": "qv"}, files=files).status_code == 201
        yield c


def schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """Nested objects, arrays, enums, bounded numbers, required and optional fields."""
    props: dict[str, Any] = {}
    for i in range(rng.randint(1, 4)):
        kind = rng.choice(["string", "integer", "number", "enum", "boolean", "array", "object"])
        if kind == "object" and depth < 2:
            props[f"k{i}"] = schema(rng, depth + 1)
        elif kind == "array":
            props[f"k{i}"] = {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3}
        elif kind == "enum":
            props[f"k{i}"] = {"enum": ["red", "green", 3, None]}
        elif kind == "integer":
            props[f"k{i}"] = {"type": "integer", "minimum": -9, "maximum": 99}
        elif kind == "number":
            props[f"k{i}"] = {"type": "number", "minimum": 0, "maximum": 1}
        elif kind == "string":
            props[f"k{i}"] = {"type": "string", "maxLength": 6}
        else:
            props[f"k{i}"] = {"type": "boolean"}
    required = [k for k in props if rng.random() < 0.6]
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}  # fmt: skip


def chat(client: TestClient, **body: Any) -> dict:
    body = {"messages": [{"role": "user", "content": "Give me a record."}], "max_tokens": NEW,
            "temperature": 0, **body}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def response_format(s: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "record", "schema": s}}


@pytest.mark.parametrize("seed", range(8))
def test_every_answer_validates_against_its_schema(client: TestClient, seed: int) -> None:
    s = schema(random.Random(seed))
    sampled = {"temperature": 1.0, "top_p": 0.9, "seed": seed, "n": 2}
    for extra in ({}, sampled):
        answer = chat(client, response_format=response_format(s), **extra)
        for choice in answer["choices"]:
            assert choice["finish_reason"] == "stop", choice
            jsonschema.validate(json.loads(choice["message"]["content"]), s)


def test_streamed_answers_equal_whole_ones(client: TestClient) -> None:
    s = schema(random.Random(11))
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": NEW, "temperature": 0,
            "response_format": response_format(s), "stream": True}  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in lines if c["choices"])
    whole = chat(client, messages=body["messages"], response_format=response_format(s))
    assert text == whole["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(text), s)


def test_json_object_regex_choice_and_grammar(client: TestClient) -> None:
    # Any object: the random model's keys may run to max_tokens; every answer is an object's
    # start, and every finished one an object.
    answer = chat(client, response_format={"type": "json_object"}, max_tokens=200, temperature=1.0,
                  seed=0, n=8)  # fmt: skip
    stopped = [c for c in answer["choices"] if c["finish_reason"] == "stop"]
    assert all(c["message"]["content"].startswith("{") for c in answer["choices"])
    assert stopped and all(isinstance(json.loads(c["message"]["content"]), dict) for c in stopped)
    pattern = r"[A-Z][a-z]{2,5}-\d{3}"
    text = chat(client, structured_outputs={"regex": pattern})["choices"][0]["message"]["content"]
    assert re.fullmatch(pattern, text), text
    choices = ["yes", "no", 'a "quoted" one']
    for seed in range(4):
        got = chat(client, structured_outputs={"choice": choices}, temperature=1.0, seed=seed)
        assert got["choices"][0]["message"]["content"] in choices
    grammar = 'root ::= "(" num ("+" num)* ")"\nnum ::= [1-9] [0-9]?'
    text = chat(client, structured_outputs={"grammar": grammar})["choices"][0]["message"]["content"]
    assert re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?)*\)", text), text
    # text is no constraint at all: the free answer
    free = chat(client)["choices"][0]["message"]["content"]
    assert (
        chat(client, response_format={"type": "text"})["choices"][0]["message"]["content"] == free
    )


def test_completions_take_constraints_too_and_length_leaves_a_valid_prefix(
    client: TestClient,
) -> None:
    body = {"prompt": "Record:", "max_tokens": 3, "temperature": 0,
            "structured_outputs": {"json": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}  # fmt: skip
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert '{"name": "'.startswith(choice["text"]) or choice["text"].startswith('{"name": "')


def test_a_constrained_sequence_does_not_depend_on_its_neighbours(client: TestClient) -> None:
    """Alone, then in one batch beside free sequences on the base and on an adapter."""
    s = schema(random.Random(5))
    alone = chat(client, response_format=response_format(s))["choices"][0]["message"]["content"]
    out: dict[int, str] = {}

    def run(i: int, body: dict) -> None:
        out[i] = chat(client, **body)["choices"][0]["message"]["content"]

    bodies = [{"response_format": response_format(s)}, {"model": "qv"}, {}, {"model": "qv",
              "response_format": response_format(s)}]  # fmt: skip
    for _ in range(2):
        threads = [threading.Thread(target=run, args=(i, b)) for i, b in enumerate(bodies)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out[0] == alone
        jsonschema.validate(json.loads(out[3]), s)
        assert out[2] == chat(client)["choices"][0]["message"]["content"]  # free ones unchanged


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "response_format.json_schema.schema"),
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"grammar": "root ::= missing"}}, "structured_outputs.grammar"),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
        ({"structured_outputs": {"choice": ["a", ""]}}, "structured_outputs.choice"),
        ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
         "structured_outputs"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"structured_outputs": {"json": {"type": "object", "properties": {"a": DEEP}}}},
         "structured_outputs.json"),
    ],
)  # fmt: skip
def test_bad_constraints_are_422_naming_the_field(
    client: TestClient, extra: dict, param: str
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param or error["param"].startswith(param), error
    assert "/project/" not in error["message"] and "cpp" not in error["message"]


def test_a_constraint_the_free_answer_meets_changes_no_token(client: TestClient) -> None:
    """The random model's free answers are mostly broken UTF-8, which no constraint on text
    allows: the first of a few prompts whose answer is whole text, as a real model's is."""
    for i in range(40):
        messages = [{"role": "user", "content": f"Question {i}?"}]
        free = chat(client, messages=messages, max_tokens=3)["choices"][0]
        text = free["message"]["content"]
        if text.isprintable() and "\ufffd" not in text:
            break
    else:
        raise AssertionError("no free answer was whole text")
    for constraint in ({"regex": r"[\s\S]*"}, {"choice": [text, text + "!"]}):
        bound = chat(client, messages=messages, max_tokens=3, structured_outputs=constraint)
        assert bound["choices"][0]["message"]["content"] == text, constraint


def test_logprobs_are_the_constrained_distribution(client: TestClient) -> None:
    choices = ["yes", "no"]
    answer = chat(client, structured_outputs={"choice": choices}, logprobs=True, top_logprobs=5)
    first = answer["choices"][0]["logprobs"]["content"][0]
    alive = first["top_logprobs"]  # only what the constraint allows, however many were asked
    assert all(t["logprob"] is not None for t in alive)
    assert alive and all(any(c.startswith(t["token"]) for c in choices) for t in alive)
    assert abs(sum(math.exp(t["logprob"]) for t in alive) - 1.0) < 1e-4
