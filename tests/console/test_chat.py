"""The console's chat tab on a tiny decoder (a random Llama with a ChatML template), keys on:
answers stream in token by token and equal the whole answers, each pane keeps its conversation,
compare mode asks two models at once, Stop aborts, and refusals show the envelope's message."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Locator, Page, Route, expect

from support.console import (
    HOSTILE,
    assert_inert,
    fake_json,
    open_tab,
    screenshot,
    start_job,
    upload_dataset,
)
from support.gen_helpers import write_tiny_causal_lm, write_tuned_adapter
from support.server import Server, running_server

KEY = "chat-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BASE = "tiny-llama"
ENDED = re.compile(r"\((stop|length)\)")  # the pane's status once its stream has ended


def upload(url: str, name: str, folder: Path) -> None:
    files = {
        "config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
        "weights": ("w.safetensors", (folder / "adapter_model.safetensors").read_bytes()),
    }
    r = httpx.post(f"{url}/v1/adapters", headers=AUTH, data={"name": name}, files=files)
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The base's folder and an adapter's."""
    tmp = tmp_path_factory.mktemp("chat-files")
    base = write_tiny_causal_lm(tmp / BASE, "llama", seed=1)
    return base, write_tuned_adapter(base, tmp / "adapter")


@pytest.fixture(scope="module")
def chat_server(
    tmp_path_factory: pytest.TempPathFactory, files: tuple[Path, Path]
) -> Iterator[Server]:
    base, adapter = files
    with running_server(
        tmp_path_factory.mktemp("chat"), base_model=str(base), admin_keys=KEY, ready_s=90
    ) as running:
        upload(running.url, "qvd", adapter)
        yield running


def open_chat(page: Page, url: str) -> None:
    page.goto(f"{url}/#chat")
    page.fill("#login-key", KEY)
    page.click("#login-form button[type=submit]")
    page.locator("#tabs button[data-tab=chat][aria-current=page]").wait_for()


def pane(page: Page, which: str) -> Locator:
    return page.get_by_role("region", name=f"{which} model")


def say(page: Page, text: str, max_tokens: int = 24, temperature: str = "0") -> None:
    page.get_by_label("Max tokens").fill(str(max_tokens))
    page.get_by_label("Temperature").fill(temperature)
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def whole(url: str, model: str, messages: list[dict], max_tokens: int = 24, **extra: object) -> str:
    """The same request, not streamed, as any client would send it."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    body.update(extra)
    r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def replies(where: Locator) -> list[str]:
    said = where.locator(".turn.assistant .said")
    return [said.nth(i).text_content() or "" for i in range(said.count())]


def test_the_chat_tab_is_only_for_decoder_bases(
    page: Page, server: Server, chat_server: Server
) -> None:
    open_tab(page, server.url, "overview")  # the tiny mlp base
    expect(page.locator("#tabs button[data-tab=chat]")).to_be_hidden()
    expect(page.locator("#tabs button[data-tab=try]")).to_be_visible()
    page.goto(f"{server.url}/#chat")
    expect(page.locator("#tab-overview")).to_be_visible()
    expect(page.locator("#tab-chat")).to_be_hidden()

    open_chat(page, chat_server.url)
    expect(page.locator("#tabs button[data-tab=try]")).to_be_hidden()  # no embeddings here
    expect(pane(page, "first").get_by_label("Model")).to_have_value(BASE)
    options = pane(page, "first").get_by_label("Model").locator("option")
    expect(options).to_have_text(
        [f"{BASE} (base model)", "qvd (adapter)", "a composition of adapters"]
    )
    page.click("#tabs button[data-tab=overview]")
    expect(page.locator("#model-facts")).to_contain_text("vocabulary of 300 tokens")
    screenshot(page, "chat-overview")


def test_a_streamed_answer_equals_the_whole_one_turn_after_turn(
    page: Page, chat_server: Server
) -> None:
    open_chat(page, chat_server.url)
    page.get_by_label("System prompt").fill("Answer in one line.")
    first = pane(page, "first")
    say(page, "What is the capital of France?")
    expect(first.locator(".pane-status")).to_contain_text(ENDED)
    conversation = [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    answer = whole(chat_server.url, BASE, conversation)
    assert answer and replies(first) == [answer]
    # The next turn carries the conversation so far.
    say(page, "And of Italy?")
    expect(first.locator(".turn")).to_have_count(4)
    expect(first.locator(".pane-status")).to_contain_text(ENDED)
    conversation += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert replies(first)[1] == whole(chat_server.url, BASE, conversation)
    expect(first.locator(".pane-status")).to_contain_text("24 tokens")
    screenshot(page, "chat-two-turns")
    page.get_by_role("button", name="Clear").click()
    expect(first.locator(".turn")).to_have_count(0)


def test_compare_mode_streams_two_models_side_by_side(page: Page, chat_server: Server) -> None:
    open_chat(page, chat_server.url)
    page.get_by_label("Compare two models side by side").check()
    first, second = pane(page, "first"), pane(page, "second")
    expect(second.get_by_label("Model")).to_have_value("qvd")
    say(page, "Hello, how are you today?")
    for where in (first, second):
        expect(where.locator(".pane-status")).to_contain_text(ENDED)
    asked = [{"role": "user", "content": "Hello, how are you today?"}]
    base, tuned = whole(chat_server.url, BASE, asked), whole(chat_server.url, "qvd", asked)
    assert base != tuned
    assert replies(first) == [base] and replies(second) == [tuned]
    expect(second.locator(".turn.assistant .who")).to_have_text("qvd")
    screenshot(page, "chat-compare")


def test_a_pane_asks_a_composition_beside_a_single_adapter(page: Page, chat_server: Server) -> None:
    open_chat(page, chat_server.url)
    page.get_by_label("Compare two models side by side").check()
    first, second = pane(page, "first"), pane(page, "second")
    expect(first.locator(".chat-compose")).to_be_hidden()
    first.get_by_label("Model").select_option(label="a composition of adapters")
    expect(first.locator(".chat-compose")).to_be_visible()
    row = first.locator(".compose-row")
    expect(row).to_have_count(1)  # one row to start with
    expect(row.get_by_label("Adapter")).to_have_value("qvd")
    row.get_by_label("Scale", exact=True).fill("-1.5")
    expect(second.get_by_label("Model")).to_have_value("qvd")
    say(page, "Hello, how are you today?")
    for where in (first, second):
        expect(where.locator(".pane-status")).to_contain_text(ENDED)
    asked = [{"role": "user", "content": "Hello, how are you today?"}]
    lora = [{"name": "qvd", "scale": -1.5}]
    composed = whole(chat_server.url, BASE, asked, lora=lora)
    tuned = whole(chat_server.url, "qvd", asked)
    assert composed != tuned
    assert replies(first) == [composed] and replies(second) == [tuned]
    expect(first.locator(".turn.assistant .who")).to_have_text("composition qvd\u00d7-1.5")
    screenshot(page, "chat-composition")
    # A composition with no adapter left is refused on the page, before any request.
    row.get_by_role("button", name="Remove").click()
    say(page, "And now?")
    expect(page.locator("#notice")).to_contain_text("Add an adapter to the composition first.")
    expect(first.locator(".turn")).to_have_count(2)


def test_a_json_schema_bounds_the_answer_and_it_is_shown_parsed(
    page: Page, chat_server: Server
) -> None:
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
              "size": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["city", "size"], "additionalProperties": False}  # fmt: skip
    open_chat(page, chat_server.url)
    page.get_by_label("JSON schema").fill(json.dumps(schema))
    first = pane(page, "first")
    say(page, "Where?", max_tokens=40)
    expect(first.locator(".pane-status")).to_contain_text(ENDED)
    asked = [{"role": "user", "content": "Where?"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    answer = whole(chat_server.url, BASE, asked, max_tokens=40, response_format=fmt)
    assert replies(first) == [answer]
    record = json.loads(answer)
    expect(first.locator("pre.parsed")).to_have_text(json.dumps(record, indent=2))
    screenshot(page, "chat-json-schema")
    page.get_by_label("JSON schema").fill("{not json")
    say(page, "Again?")
    expect(page.locator("#notice")).to_contain_text("The JSON schema is not JSON")
    expect(first.locator(".turn")).to_have_count(2)


def test_stop_aborts_the_answer_in_flight(page: Page, chat_server: Server) -> None:
    held: list[Route] = []
    page.route("**/v1/chat/completions", lambda route: held.append(route))  # never answered
    open_chat(page, chat_server.url)
    say(page, "Hello")
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_enabled()
    stop.click()
    expect(pane(page, "first").locator(".pane-status")).to_have_text("stopped")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    assert len(held) == 1


def test_a_refused_request_shows_the_envelopes_message(
    page: Page, chat_server: Server, files: tuple[Path, Path]
) -> None:
    upload(chat_server.url, "gone", files[1])
    open_chat(page, chat_server.url)
    first = pane(page, "first")
    status = first.locator(".pane-status")
    say(page, "Hello", max_tokens=10_000)
    expect(status).to_have_text(
        re.compile(r"over the model's context of 256 \(422 invalid_input\)")
    )
    expect(status).to_have_class(re.compile("error"))
    # An adapter deleted after the page listed it.
    first.get_by_label("Model").select_option("gone")
    r = httpx.delete(f"{chat_server.url}/v1/adapters/gone", headers=AUTH)
    assert r.status_code == 204
    say(page, "Hello")
    expect(status).to_have_text("adapter 'gone' not found (404 adapter_not_found)")
    screenshot(page, "chat-refused")
    # Refused turns are not part of the conversation the next turn sends.
    first.get_by_label("Model").select_option(BASE)
    say(page, "Hello")
    expect(status).to_contain_text(ENDED)
    assert replies(first)[-1] == whole(
        chat_server.url, BASE, [{"role": "user", "content": "Hello"}]
    )


def test_an_error_mid_stream_keeps_the_text_and_shows_the_message(
    page: Page, chat_server: Server
) -> None:
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}  # fmt: skip
    error = {"error": {"type": "server_error", "code": "internal_error", "message": "the engine stopped"}}  # fmt: skip
    chunks = [chunk, {**chunk, "choices": [{**chunk["choices"][0], "delta": {"content": "lo"}}]}]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in [*chunks, error])
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body),
    )
    open_chat(page, chat_server.url)
    say(page, "Hello")
    first = pane(page, "first")
    expect(first.locator(".pane-status")).to_have_text("the engine stopped")
    assert replies(first) == ["Hello"]
    expect(first.locator(".turn.assistant .error")).to_have_text("the engine stopped")


def test_an_sft_job_draws_exact_match_beside_its_losses(
    page: Page, chat_server: Server, tmp_path: Path
) -> None:
    words = ["Paris", "fox", "dog", "world"]
    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}
        for w in words
    ]
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    open_chat(page, chat_server.url)
    page.click("#tabs button[data-tab=training]")
    expect(page.locator("#dataset-hint")).to_contain_text("SFT rows")
    expect(page.locator("#job-loss option[value=sft]")).to_be_enabled()
    expect(page.locator("#job-loss option[value=mse]")).to_be_disabled()
    dataset = upload_dataset(page, chats)
    start_job(page, "chatty", dataset, dataset, epochs=2, batch=4)
    expect(page.locator("#watch-status")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#watch-chart")).to_have_attribute("data-points", "2")
    expect(page.locator(".u-legend")).to_contain_text("exact match")
    screenshot(page, "chat-sft-job")
    # The new adapter is one more model to chat with.
    page.click("#tabs button[data-tab=chat]")
    expect(pane(page, "first").locator("option[value=chatty]")).to_have_count(1)


def test_a_base_without_a_chat_template_continues_a_plain_prompt(
    page: Page, tmp_path: Path
) -> None:
    base = write_tiny_causal_lm(tmp_path / "plain", "llama", seed=1, chat_template=False)
    with running_server(tmp_path, base_model=str(base), ready_s=90) as plain:
        open_tab(page, plain.url, "chat")
        expect(page.locator("#chat-hint")).to_contain_text("no chat template")
        say(page, "The capital of France")
        first = pane(page, "first")
        expect(first.locator(".pane-status")).to_contain_text(ENDED)
        body = {"prompt": "The capital of France", "max_tokens": 24, "temperature": 0}
        whole = httpx.post(f"{plain.url}/v1/completions", json=body, timeout=30).json()
        assert replies(first) == [whole["choices"][0]["text"]]


def test_a_hostile_model_name_is_shown_as_text(page: Page, chat_server: Server) -> None:
    """As if /v1/models held markup: the option and the answer's label stay text."""
    listed = {"object": "list", "data": [{"id": HOSTILE, "object": "model", "parent": BASE}]}
    fake_json(page, r"/v1/models$", listed)
    open_chat(page, chat_server.url)
    say(page, "Hello")  # the server refuses the name, quoting it
    expect(pane(page, "first").locator(".pane-status")).to_contain_text("422 invalid_name")
    expect(pane(page, "first").locator(".turn.assistant .who")).to_have_text(HOSTILE)
    assert_inert(page, "#tab-chat")
