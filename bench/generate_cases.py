"""The cases that bench/generate.py --peer measures on any OpenAI-compatible server (ours or the
peer), by the token events of streamed answers (httpx):

  TTFT         c=1, streamed, max_tokens 1: the time from sending a request to the event that
               carries its first token (not the first byte: vLLM sends its headers at once)
  one stream   one streamed request of NEW_TOKENS tokens alone on the server; decode tokens/s
               is (NEW_TOKENS - 1) over the time from its first token's event to its last's
  shared chats 16 chats sharing a ~1,000-token system message (POST /v1/chat/completions,
               streamed, each with its own short user message): one chat first, alone and to its
               end (it leaves the system prompt's KV in the server's prefix cache, if it has one),
               then the 16 at once; their TTFT p50 is the figure. With a prefix cache each of the
               16 prefills only its user message; without, the whole ~1,000 tokens each.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import httpx

from bench.embeddings import texts
from bench.generate_load import COMPLETIONS, NEW_TOKENS, drain_ours, served

CHAT = "/v1/chat/completions"
SYSTEM_TOKENS, CHAT_TOKENS, CHATS = 1000, 16, 16


def _content(line: str) -> str:
    """The text an SSE line carries (completions' `text` or chat's `delta.content`), or ''."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return ""
    choices = json.loads(line[6:]).get("choices") or [{}]
    choice = choices[0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


async def _token_times(client: httpx.AsyncClient, url: str, path: str, body: dict) -> list[float]:
    """Seconds from sending `body` (streamed) to each event that carries text."""
    start = time.perf_counter()
    times = []
    async with client.stream("POST", f"{url}{path}", json={**body, "stream": True}) as answer:
        if answer.status_code != 200:
            await answer.aread()
            raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:500]}")
        async for line in answer.aiter_lines():
            if _content(line):
                times.append(time.perf_counter() - start)
    if not times:
        raise RuntimeError(f"{path}: a stream without any token")
    return times


def _streams(url: str, path: str, bodies: list[dict]) -> list[list[float]]:
    """`bodies` streamed all at once; each one's token times."""

    async def run() -> list[list[float]]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(timeout=900, limits=limits) as client:
            return await asyncio.gather(*(_token_times(client, url, path, b) for b in bodies))

    return asyncio.run(run())


def ttft(url: str, bodies: list[dict]) -> dict[str, Any]:
    """TTFT of each of `bodies`, one at a time (max_tokens 1), in ms."""
    samples = [_streams(url, COMPLETIONS, [{**b, "max_tokens": 1}])[0][0] * 1000 for b in bodies]
    return {"p50_ms": statistics.median(samples), "samples_ms": samples}


def one_stream(url: str, body: dict) -> dict[str, Any]:
    """Decode tokens/s of one streamed request of NEW_TOKENS tokens (ignore_eos)."""
    times = _streams(url, COMPLETIONS, [{**body, "max_tokens": NEW_TOKENS}])[0]
    decode = times[-1] - times[0]
    return {"tokens_per_s": (NEW_TOKENS - 1) / decode, "ttft_ms": times[0] * 1000,
            "seconds": times[-1], "events": len(times)}  # fmt: skip


def system_prompt(tokenizer: Any, n: int = SYSTEM_TOKENS) -> str:
    """A system message of n tokens (text that tokenizes back to itself)."""
    words = " ".join(texts(4 * n // 30, seed=27))
    ids = tokenizer(words)["input_ids"][:n]
    return "You answer questions about these notes.\n" + tokenizer.decode(ids)


def chat_bodies(model: str, system: str, n: int) -> list[dict]:
    """n greedy chats on `system`, each with its own short user message."""
    return [{"model": model, "max_tokens": CHAT_TOKENS, "temperature": 0, "ignore_eos": True,
             "messages": [{"role": "system", "content": system},
                          {"role": "user", "content": f"Note {i}: {texts(1, 1000 + i)[0]}?"}]}
            for i in range(n)]  # fmt: skip


def shared_chats(url: str, bodies: list[dict]) -> dict[str, Any]:
    """bodies[0] alone to its end, then the others at once: their TTFT (ms), p50 first, and
    what the server's prefix-cache counters in /metrics (if it has any) counted meanwhile."""
    before = prefix_counters(url)
    first = _streams(url, CHAT, bodies[:1])[0][0] * 1000
    samples = [s[0] * 1000 for s in _streams(url, CHAT, bodies[1:])]
    after = prefix_counters(url)
    return {"p50_ms": statistics.median(samples), "first_chat_ms": first, "samples_ms": samples,
            "prefix_counters": {k: v - before.get(k, 0) for k, v in after.items()}}  # fmt: skip


def prefix_counters(url: str) -> dict[str, float]:
    """The /metrics counters whose name speaks of a prefix cache (vLLM's hits and queries, in
    tokens), summed over their labels."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name = line.split("{")[0].split()[0] if line and not line.startswith("#") else ""
        if "prefix_cache" in name and name.endswith("_total"):
            out[name] = out.get(name, 0) + float(line.split()[-1])
    return out


def greedy(url: str, body: dict) -> dict[str, Any]:
    """The text of a non-streamed greedy request and the sum of its tokens' logprobs (a check
    that two servers answer alike, and that an adapter changes the answer's logprobs)."""
    answer = httpx.post(f"{url}{COMPLETIONS}", json={**body, "stream": False, "logprobs": 1},
                        timeout=600)  # fmt: skip
    answer.raise_for_status()
    choice = answer.json()["choices"][0]
    return {"text": choice["text"], "logprob": sum(choice["logprobs"]["token_logprobs"])}


def vllm_in_flight(url: str) -> int:
    """Requests vLLM runs or holds (its /metrics gauges)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
            total += float(line.split()[-1])
    return int(total)


def drain(url: str, server: str, before: int, load: dict) -> None:
    """Wait until what a wrk load left in flight is done (or dropped), so that it is not charged
    to the next case: ours by its count of finished requests, vLLM by its running gauges."""
    if server == "ours":
        drain_ours(url, before + load["completed_in_all"] + 16, 3 * load["seconds"] + 30)
        return
    deadline = time.monotonic() + 3 * load["seconds"] + 30
    while vllm_in_flight(url) > 0:
        if time.monotonic() > deadline:
            print(f"warning: {vllm_in_flight(url)} requests still in flight", flush=True)
            return
        time.sleep(0.5)


def finished(url: str, server: str) -> int:
    """Our server's count of finished completions (0 for the peer, drained otherwise)."""
    return served(url) if server == "ours" else 0
