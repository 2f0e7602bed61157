"""Structured outputs under load (issue 30's targets), SmolLM2-135M-Instruct served as users run
it (`loraserve serve`, LORASERVE_BASE_MODEL the .gguf, default settings), on 127.0.0.1.

    .venv/bin/python bench/structured.py [--duration 30] [--rounds 3] [--out FILE]

  tokens/s   16 concurrent streams (httpx), POST /v1/completions of 64-token prompts, 128 new
             tokens each, greedy: all free, against half of them under a JSON schema whose
             answers run past 128 tokens (a list of at least 64 strings), so both loads make
             the same tokens per request; completion tokens (from usage) per second of the load.
             Target: at least 0.9x.
  TTFT       one streamed request at a time (max_tokens 1): free; under a schema new to the
             server (a cache miss: its compile is part of the wait); under the same schema again
             (cached). Targets: at most 1.5x and 1.1x the free one.
Both loads, and the three TTFT cases, in turn, round after round; ratios of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

from app.families.decoder.gguf import converted_folder, known_gguf  # noqa: E402
from bench.generate_cases import _streams  # noqa: E402
from bench.generate_load import COMPLETIONS, NEW_TOKENS, STREAMS, prompts  # noqa: E402
from bench.harness import bin_path, gguf_env, server  # noqa: E402


def long_schema(tag: str) -> dict:
    """Answers of more than NEW_TOKENS tokens: 64 strings at least (`tag` makes it new)."""
    return {"type": "object", "properties": {tag: {"type": "array", "minItems": 64,
            "items": {"type": "string", "maxLength": 8}}}, "required": [tag]}  # fmt: skip


def body(prompt: str, base: str, schema: dict | None, max_tokens: int = NEW_TOKENS) -> dict:
    out = {"model": base, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if schema is not None:
        out["structured_outputs"] = {"json": schema}
    return out


async def _worker(client: httpx.AsyncClient, url: str, b: dict, until: float) -> list[int]:
    tokens = []
    while time.perf_counter() < until:
        r = await client.post(f"{url}{COMPLETIONS}", json=b)
        r.raise_for_status()
        tokens.append(r.json()["usage"]["completion_tokens"])
    return tokens


def load(url: str, bodies: list[dict], seconds: float) -> dict[str, float]:
    """Each body on its own connection, again and again, for `seconds` (and the requests in
    flight then): completion tokens per second."""

    async def run() -> tuple[list[list[int]], float]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(timeout=900, limits=limits) as client:
            start = time.perf_counter()
            done = await asyncio.gather(*(_worker(client, url, b, start + seconds) for b in bodies))
            return done, time.perf_counter() - start

    done, elapsed = asyncio.run(run())
    total = sum(map(sum, done))
    return {"tokens_per_s": total / elapsed, "requests": sum(map(len, done)), "seconds": elapsed}


def ttft_ms(url: str, b: dict) -> float:
    return _streams(url, COMPLETIONS, [{**b, "max_tokens": 1}])[0][0] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=30, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft-samples", type=int, default=5, help="per case and round")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "loraserve-bench-models")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    gguf = known_gguf("SmolLM2-135M-Instruct")
    assert gguf is not None
    folder = converted_folder(gguf, args.cache)
    texts = prompts(AutoTokenizer.from_pretrained(folder), STREAMS + 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-structured-"))
    rounds: list[dict[str, Any]] = []
    try:
        env = gguf_env(tmp, gguf, folder)
        with server([bin_path("loraserve"), "serve"], env) as url:
            base = httpx.get(f"{url}/v1/model").json()["name"]
            cached = long_schema("items")
            loads = {
                "free": [body(t, base, None) for t in texts[:STREAMS]],
                "half_schema": [
                    body(t, base, cached if i % 2 else None) for i, t in enumerate(texts[:STREAMS])
                ],
            }
            answer = httpx.post(f"{url}{COMPLETIONS}", json=loads["half_schema"][1], timeout=300)
            assert answer.json()["choices"][0]["finish_reason"] == "length", answer.text
            load(url, loads["free"][:2], 1)  # warm
            probe = texts[STREAMS]
            for i in range(args.rounds):
                one: dict[str, Any] = {k: load(url, v, args.duration) for k, v in loads.items()}
                one["ttft_free_ms"] = [ttft_ms(url, body(probe, base, None))
                                       for _ in range(args.ttft_samples)]  # fmt: skip
                one["ttft_new_schema_ms"] = [
                    ttft_ms(url, body(probe, base, long_schema(f"r{i}s{j}")))
                    for j in range(args.ttft_samples)
                ]
                one["ttft_cached_schema_ms"] = [ttft_ms(url, body(probe, base, cached))
                                                for _ in range(args.ttft_samples)]  # fmt: skip
                rounds.append(one)
                print(f"round {i + 1}: free {one['free']['tokens_per_s']:.1f}, half under a "
                      f"schema {one['half_schema']['tokens_per_s']:.1f} tokens/s; TTFT free "
                      f"{statistics.median(one['ttft_free_ms']):.0f}, new schema "
                      f"{statistics.median(one['ttft_new_schema_ms']):.0f}, cached "
                      f"{statistics.median(one['ttft_cached_schema_ms']):.0f} ms", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = lambda key: statistics.median(x for r in rounds for x in r[key])  # noqa: E731
    tps = lambda kind: statistics.median(r[kind]["tokens_per_s"] for r in rounds)  # noqa: E731
    result = {
        "streams": STREAMS, "new_tokens": NEW_TOKENS, "duration_s": args.duration,
        "server": "loraserve serve, LORASERVE_BASE_MODEL the .gguf, default settings",
        "tokens_per_s": {"free": tps("free"), "half_schema": tps("half_schema")},
        "throughput_ratio": tps("half_schema") / tps("free"), "throughput_target": 0.9,
        "ttft_ms": {"free": med("ttft_free_ms"), "new_schema": med("ttft_new_schema_ms"),
                    "cached_schema": med("ttft_cached_schema_ms")},
        "ttft_new_ratio": med("ttft_new_schema_ms") / med("ttft_free_ms"), "ttft_new_target": 1.5,
        "ttft_cached_ratio": med("ttft_cached_schema_ms") / med("ttft_free_ms"),
        "ttft_cached_target": 1.1,
        "rounds": rounds,
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
