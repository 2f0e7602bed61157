"""The real server on a tiny decoder, as a hostile client meets it: clients that leave before
their first token, megabytes of prompt beside /healthz, streams longer than the body deadline,
and a temperature that overflows the logits beside running streams."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.gen_helpers import write_tiny_causal_lm
from support.server import Server, running_server


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # SmolLM2's context: the body caps and the length checks follow it.
    folder = tmp_path_factory.mktemp("llama") / "tiny-llama"
    return write_tiny_causal_lm(folder, context=8192)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    log = tmp / "server.log"
    settings = {"base_model": str(base_dir), "max_running_seqs": "1", "body_timeout_s": "0.5"}
    with running_server(tmp, log=log, ready_s=60, **settings) as s:
        s.log = log  # type: ignore[attr-defined]
        yield s


def metric(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


def long_request(stream: bool = False, **extra: object) -> dict[str, object]:
    return {"prompt": "The capital of France is", "max_tokens": 200, "ignore_eos": True,
            "temperature": 0, "stream": stream, **extra}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_clients_that_leave_before_their_first_token_are_dropped(server, stream) -> None:
    generated = metric(server, "loraserve_generation_tokens")

    def leave() -> None:  # send the request, wait 50 ms, hang up (read or not)
        body = json.dumps(long_request(stream)).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection((host, port)) as conn:
            conn.sendall(head.encode() + body)
            time.sleep(0.05)

    host, port = httpx.URL(server.url).host, httpx.URL(server.url).port
    # Eight requests queue behind one another (one runs at a time); each client gives up
    # at 50 ms. Served to the end, they would generate 1,600 tokens.
    clients = [threading.Thread(target=leave) for _ in range(8)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    deadline = time.monotonic() + 10
    while metric(server, "loraserve_generation_running") or metric(
        server, "loraserve_generation_waiting"
    ):
        assert time.monotonic() < deadline, "sequences of gone clients still in the engine"
        time.sleep(0.05)
    # Each sequence that ran stopped within a step or two of its client's leaving (a busy
    # machine may tokenize a request after its client left, and run it for a step).
    assert metric(server, "loraserve_generation_tokens") - generated < 200
    time.sleep(0.2)  # the access log line is written as the request ends
    statuses = [
        json.loads(line).get("status")
        for line in server.log.read_text().splitlines()  # type: ignore[attr-defined]
        if '"route": "/v1/completions"' in line
    ]
    assert statuses.count(499) >= 8


def test_a_stream_longer_than_the_body_deadline_ends_properly(server) -> None:
    # BODY_TIMEOUT_S is 0.5 s here; four sequences of 200 tokens one at a time take longer.
    body = long_request(stream=True, n=4)
    start = time.monotonic()
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as answer:
        assert answer.status_code == 200
        lines = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert time.monotonic() - start > 0.5, "the stream was too short to prove anything"
    assert lines[-1] == "data: [DONE]"
    finishes = [
        c["finish_reason"]
        for line in lines[:-1]
        for c in json.loads(line[6:])["choices"]
        if c["finish_reason"] is not None
    ]
    assert finishes == ["length"] * 4


def test_megabytes_of_prompt_never_stall_healthz(server) -> None:
    huge = {"prompt": "word " * 1_200_000, "max_tokens": 1}  # 6 MB
    answers: list[int] = []

    def send() -> None:
        answers.append(
            httpx.post(f"{server.url}/v1/completions", json=huge, timeout=60).status_code
        )

    senders = [threading.Thread(target=send) for _ in range(3)]
    for s in senders:
        s.start()
    slowest = 0.0
    while any(s.is_alive() for s in senders):
        start = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        slowest = max(slowest, time.monotonic() - start)
    for s in senders:
        s.join()
    assert answers == [413] * 3
    assert slowest < 2.0  # it was 10 s of 10.4 (a frozen event loop), not a scheduling hiccup


def test_text_far_over_the_context_is_refused_before_tokenizing(server) -> None:
    # Under the body cap, but more characters than the context could hold in any tokenization.
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x" * 400_000}]},
        timeout=30,
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["param"] == "messages" and "characters" in error["message"]


def test_a_temperature_that_overflows_fails_nobody(server) -> None:
    results: dict[str, int] = {}

    def run(tag: str, body: dict[str, object]) -> None:
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        results[tag] = r.status_code
        if tag == "tiny":
            assert r.json()["choices"][0]["finish_reason"] == "length"

    threads = [
        threading.Thread(target=run, args=("running", long_request())),
        threading.Thread(target=run, args=("tiny", long_request(temperature=1e-38, max_tokens=8))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"running": 200, "tiny": 200}
