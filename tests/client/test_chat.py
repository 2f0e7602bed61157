"""Chat and completions from the Python client and the CLI, over HTTP to a tiny Llama.

The server is uvicorn on 127.0.0.1 in a thread of the test process: the same HTTP and streaming
as the container's, without a second process importing torch (seconds, not tens of them).
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from app.cli.main import EXIT_SERVICE, main
from app.client import AsyncClient, Client, ServiceError
from app.main import create_app
from app.settings import Settings
from support.gen_helpers import write_tiny_causal_lm
from support.helpers import adapter_files, peft_config
from support.server import free_port

KEY = "chat-admin"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 16}
# (in, out) of the tiny Llama's projections the adapter wraps: hidden 32, 2 KV heads of 8, MLP 64.
SHAPES = {"self_attn.q_proj": (32, 32), "self_attn.v_proj": (32, 16), "mlp.down_proj": (64, 32)}


def write_adapter(folder: Path, rank: int = 4) -> Path:
    """A PEFT folder for the tiny Llama, B large enough that greedy answers change."""
    gen = torch.Generator().manual_seed(5)
    tensors = {}
    for layer in range(2):
        for module, (n_in, n_out) in SHAPES.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, n_in, generator=gen) * 0.3
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(n_out, rank, generator=gen) * 0.5
    targets = sorted({m.split(".")[1] for m in SHAPES})
    config, weights = adapter_files(peft_config(rank, 2 * rank, targets), tensors)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_bytes(config)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("chat")
    base = write_tiny_causal_lm(tmp / "tiny-llama", "llama", seed=1)
    settings = Settings(base_model=base, adapters_dir=tmp / "adapters", data_dir=tmp / "data",
                        device="cpu", admin_keys=KEY)  # fmt: skip
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        with Client(url, api_key=KEY) as client:
            client.upload_adapter("tuned", write_adapter(tmp / "tuned"))
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url, api_key=KEY) as c:
        yield c


@pytest.fixture
def cli_env(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORASERVE_URL", url)
    monkeypatch.setenv("LORASERVE_API_KEY", KEY)


def chat_text(client: Client, messages: list[dict], model: str | None = None) -> str:
    return str(client.chat(messages, model, **GREEDY)["choices"][0]["message"]["content"])


# --- the client ---------------------------------------------------------------------------------
def test_chat_stream_deltas_join_to_the_whole_answer(client: Client) -> None:
    whole = client.chat(HELLO, **GREEDY)
    assert whole["object"] == "chat.completion" and whole["model"] == "tiny-llama"
    deltas = list(client.chat_stream(HELLO, **GREEDY))
    assert len(deltas) > 1 and all(deltas)
    assert "".join(deltas) == whole["choices"][0]["message"]["content"]


def test_complete_stream_deltas_join_to_the_whole_completion(client: Client) -> None:
    whole = client.complete("The capital of France", "tuned", **GREEDY)
    assert whole["object"] == "text_completion" and whole["model"] == "tuned"
    deltas = list(client.complete_stream("The capital of France", "tuned", **GREEDY))
    assert "".join(deltas) == whole["choices"][0]["text"]


def test_model_names_an_adapter_and_none_the_base(client: Client) -> None:
    assert chat_text(client, HELLO) == chat_text(client, HELLO, "tiny-llama")
    assert chat_text(client, HELLO, "tuned") != chat_text(client, HELLO)


def test_async_chat_stream_joins_to_the_answer(url: str, client: Client) -> None:
    async def run() -> str:
        async with AsyncClient(url, api_key=KEY) as ac:
            return "".join([d async for d in ac.chat_stream(HELLO, "tuned", **GREEDY)])

    assert asyncio.run(run()) == chat_text(client, HELLO, "tuned")


@pytest.mark.parametrize("stream", [False, True])
def test_an_unknown_model_raises_service_error(client: Client, stream: bool) -> None:
    with pytest.raises(ServiceError) as missing:
        if stream:
            list(client.chat_stream(HELLO, "nope", **GREEDY))
        else:
            client.chat(HELLO, "nope", **GREEDY)
    assert missing.value.status == 404 and missing.value.param == "model"


def test_a_stream_of_several_choices_is_refused(client: Client) -> None:
    with pytest.raises(ValueError, match="n > 1"):
        client.chat_stream(HELLO, n=2)


def sse(*events: dict | str) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + b"\n\n" for e in events
    )


def chunk(text: str) -> dict:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


def mocked(body: bytes) -> httpx.MockTransport:
    """A service that answers every request with these server-sent events."""
    return httpx.MockTransport(
        lambda request: httpx.Response(
            200, content=body, headers={"content-type": "text/event-stream"}
        )
    )


LATE_ERROR = sse(
    chunk("Hel"),
    {"error": {"type": "server_error", "code": "internal_error", "message": "boom", "param": None}},
)


def test_an_error_event_in_the_stream_raises_after_the_text_before_it() -> None:
    got = []
    with Client("http://test", transport=mocked(LATE_ERROR)) as c, pytest.raises(ServiceError) as e:
        got.extend(c.chat_stream(HELLO))
    assert got == ["Hel"] and (e.value.code, e.value.message) == ("internal_error", "boom")


def test_a_stream_cut_before_done_raises() -> None:
    cut_short = mocked(sse(chunk("Hel")))
    with Client("http://test", transport=cut_short) as c, pytest.raises(ServiceError) as cut:
        list(c.chat_stream(HELLO))
    assert cut.value.code == "stream_incomplete"


def cli_errors(err: str) -> list[str]:
    """The CLI's lines of stderr: the in-process server writes its JSON log lines there too."""
    return [line for line in err.splitlines() if not line.startswith("{")]


# --- the CLI ------------------------------------------------------------------------------------
def test_cli_chat_prints_the_streamed_answer(client: Client, cli_env, capsys) -> None:
    main(["chat", "--temperature", "0", "--max-tokens", "16", HELLO[0]["content"]])
    streamed = capsys.readouterr().out
    main(["chat", "--no-stream", "--temperature", "0", "--max-tokens", "16", HELLO[0]["content"]])
    assert streamed == capsys.readouterr().out == chat_text(client, HELLO) + "\n"


def test_cli_chat_system_message_comes_first(client: Client, cli_env, capsys) -> None:
    system = {"role": "system", "content": "You are terse."}
    main(["chat", "--system", system["content"], "--temperature", "0", "--max-tokens", "16",
          HELLO[0]["content"]])  # fmt: skip
    assert capsys.readouterr().out == chat_text(client, [system, *HELLO]) + "\n"


def test_cli_chat_adapter_selects_the_adapter(client: Client, cli_env, capsys) -> None:
    main(["chat", "--adapter", "tuned", "--temperature", "0", "--max-tokens", "16",
          HELLO[0]["content"]])  # fmt: skip
    out = capsys.readouterr().out
    assert out == chat_text(client, HELLO, "tuned") + "\n"
    assert out != chat_text(client, HELLO) + "\n"


def test_cli_and_client_pass_a_response_format(
    client: Client, cli_env, capsys, tmp_path: Path
) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}  # fmt: skip
    (tmp_path / "answer.json").write_text(json.dumps(schema))
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    whole = client.chat(HELLO, temperature=0, max_tokens=16, response_format=fmt)
    text = whole["choices"][0]["message"]["content"]
    assert json.loads(text)["ok"] in (True, False)
    main(["chat", "--json-schema", str(tmp_path / "answer.json"), "--temperature", "0",
          "--max-tokens", "16", HELLO[0]["content"]])  # fmt: skip
    assert capsys.readouterr().out == text + "\n"
    main(["complete", "--regex", "[ab]{3}", "--temperature", "0", "Hello"])
    assert re.fullmatch("[ab]{3}\n", capsys.readouterr().out)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--json-schema", str(tmp_path / "bad.json"), "Hello"])
    assert exited.value.code == 2 and "is not JSON" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["chat", "complete"])
def test_cli_unknown_adapter_is_one_error_line(cli_env, capsys, command: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--adapter", "nope", "Hello"])
    printed = capsys.readouterr()
    assert exited.value.code == EXIT_SERVICE and printed.out == ""
    lines = cli_errors(printed.err)
    assert len(lines) == 1 and lines[0].startswith("error: 404 ") and "nope" in lines[0]


def test_cli_interactive_chat_keeps_the_history(
    client: Client, cli_env, capsys, monkeypatch
) -> None:
    first, second = "Hello, how are you today?", "And then?"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{first}\n{second}\n\nnever read\n"))
    main(["chat", "--temperature", "0", "--max-tokens", "16"])
    out = capsys.readouterr().out
    one = [{"role": "user", "content": first}]
    reply = chat_text(client, one)
    two = [*one, {"role": "assistant", "content": reply}, {"role": "user", "content": second}]
    assert out == f"{reply}\n{chat_text(client, two)}\n"
    # The second turn's answer depends on the first: without the history it is another.
    assert chat_text(client, two) != chat_text(client, [{"role": "user", "content": second}])


def test_cli_interactive_chat_ends_at_eof(cli_env, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    main(["chat"])
    assert capsys.readouterr().out == ""


def test_cli_complete_prints_the_completion(client: Client, cli_env, capsys) -> None:
    prompt = "The capital of France"
    main(["complete", "--adapter", "tuned", "--temperature", "0", "--max-tokens", "16", prompt])
    want = client.complete(prompt, "tuned", **GREEDY)["choices"][0]["text"]
    assert capsys.readouterr().out == want + "\n"


def test_cli_error_mid_stream_ends_the_line_then_reports(capsys, monkeypatch) -> None:
    monkeypatch.setattr(
        "app.cli.main.Client", functools.partial(Client, transport=mocked(LATE_ERROR))
    )
    with pytest.raises(SystemExit) as exited:
        main(["--url", "http://test", "chat", "Hi"])
    printed = capsys.readouterr()
    assert exited.value.code == EXIT_SERVICE and printed.out == "Hel\n"
    assert cli_errors(printed.err) == ["error: 200 internal_error: boom"]


# --- chat datasets ------------------------------------------------------------------------------
def test_cli_train_sends_a_chat_jsonl_unchanged(tmp_path: Path, capsys, monkeypatch) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
        {"prompt": "2 + 2 =", "completion": " 4"},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "chat.jsonl").write_bytes(data)
    seen: list[httpx.Request] = []

    def service(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/datasets":
            return httpx.Response(201, json={"id": "ds-1"})
        job = {"id": "job-1", "status": "queued", "hyperparameters": {}}
        return httpx.Response(201, json=job)

    transport = httpx.MockTransport(service)
    monkeypatch.setattr("app.cli.main.Client", functools.partial(Client, transport=transport))
    main(["--url", "http://test", "train", "chatty", "--data", str(tmp_path / "chat.jsonl")])
    upload, job = seen
    body = upload.read()
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert b'filename="chat.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n' + data in body
    assert json.loads(job.read())["training_dataset"] == "ds-1"
    assert "job job-1 queued" in capsys.readouterr().out
