"""The generation benchmark's load and latency clients: prompts and request bodies, wrk loads that
stop at a wave's end, draining the service, TTFT by curl and inter-token gaps by httpx."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

import httpx

from bench.embeddings import texts
from bench.harness import lua_strings, wrk_exe

PROMPT_TOKENS, NEW_TOKENS, STREAMS, N_ADAPTERS, RANK = 64, 128, 16, 16, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
COMPLETIONS = "/v1/completions"

# Completion times (clock_gettime through LuaJIT's ffi: wrk's Lua has no wall clock) as they
# happen, and wrk's own counts at the end.
_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now() ffi.C.clock_gettime(1, ts) return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9 end
local bodies = {
%s
}
local headers = {["Content-Type"] = "application/json"}
local i, t0 = 0, nil
request = function()
  if t0 == nil then t0 = now() end
  i = i %% #bodies + 1
  return wrk.format("POST", "%s", headers, bodies[i])
end
response = function(status, headers, body)
  io.write(string.format("done_s %%.6f %%d\\n", now() - t0, status))
  io.flush()
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"p50_ms": %%.1f, "socket_errors": %%d}\\n', latency:percentile(50) / 1000,
    e.connect + e.read + e.write + e.timeout))
end
"""


def completion(prompt: str, model: str, max_tokens: int = NEW_TOKENS, stream: bool = False) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}  # fmt: skip


def prompts(tokenizer: Any, n: int) -> list[str]:
    """n texts that tokenize to exactly PROMPT_TOKENS tokens (and back to the same text)."""
    out: list[str] = []
    for seed in itertools.count():
        ids = tokenizer(" ".join(texts(4, seed)))["input_ids"][:PROMPT_TOKENS]
        text = tokenizer.decode(ids)
        if tokenizer(text)["input_ids"] == ids:
            out.append(text)
        if len(out) == n:
            return out
    raise AssertionError("unreachable")


def wrk_load(url: str, bodies: list[bytes], min_s: float, every: int, max_s: float) -> dict:
    """Load by wrk (STREAMS connections) for at least min_s, then up to the next completion
    that is a multiple of `every`; tokens/s over the completions up to it."""
    exe = wrk_exe()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA % (lua_strings(bodies), COMPLETIONS))
    cmd = [exe, "-t", "1", "-c", str(STREAMS), "-d", f"{round(max_s)}s", "--timeout",
           f"{round(max_s)}s", "-s", f.name, url]  # fmt: skip
    load = os.getloadavg()[0]
    done: list[tuple[float, int]] = []
    summary: dict = {}
    stop: tuple[int, float] | None = None
    proc: subprocess.Popen | None = None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("done_s "):
                t, status = line.split()[1:]
                done.append((float(t), int(status)))
                if stop is None and len(done) % every == 0 and float(t) >= min_s:
                    stop = (len(done), float(t))
                    proc.send_signal(signal.SIGINT)  # wrk stops and prints its summary
            elif line.startswith("{"):
                summary = json.loads(line)
        proc.wait()
    finally:
        if proc is not None and proc.poll() is None:  # interrupted: no wrk left behind
            proc.kill()
            proc.wait()
        os.unlink(f.name)
    failed = sum(status != 200 for _, status in done) + summary.get("socket_errors", 0)
    assert failed == 0, f"{failed} requests failed"
    if stop is None:  # ran to max_s: the last full wave
        n = len(done) - len(done) % every
        assert n > 0, f"no {every} requests completed in {max_s:.0f} s"
        stop = (n, done[n - 1][0])
    n, seconds = stop
    return {"tokens_per_s": n * NEW_TOKENS / seconds, "requests": n, "seconds": seconds,
            "p50_latency_s": summary.get("p50_ms", 0) / 1000, "load_avg": load,
            "completed_in_all": len(done)}  # fmt: skip


def served(url: str) -> int:
    """Completion requests the service has finished (any status), from its /metrics."""
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("loraserve_request_seconds_count") and f'"{COMPLETIONS}"' in line:
            return int(float(line.split()[-1]))
    return 0


def drain_ours(url: str, expected: int, timeout_s: float) -> None:
    """Wait until the requests wrk left in flight are done: the service finishes a request
    whose client went away, and that work would be charged to whatever runs next."""
    deadline = time.monotonic() + timeout_s
    while served(url) < expected:
        if time.monotonic() > deadline:
            print(f"warning: {expected - served(url)} requests still in flight", flush=True)
            return
        time.sleep(0.5)


def ttft_ms(url: str, bodies: list[dict]) -> list[float]:
    """Time to the first byte of each streamed request, one at a time, by curl (C, so the
    client adds next to nothing). The service sends its headers with the first token's event,
    so that byte is the first token; max_tokens 1 ends each request there."""
    exe = shutil.which("curl")
    assert exe, "curl is not installed"
    out = []
    for body in bodies:
        data = json.dumps({**body, "max_tokens": 1})
        got = subprocess.run(
            [exe, "-s", "-N", "-o", os.devnull, "-w", "%{http_code} %{time_starttransfer}",
             "-H", "Content-Type: application/json", "--data-binary", data, f"{url}{COMPLETIONS}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert got[0] == "200", got
        out.append(float(got[1]) * 1000)
    return out


async def _event_times(client: httpx.AsyncClient, url: str, body: dict) -> list[float]:
    times = []
    async with client.stream("POST", f"{url}{COMPLETIONS}", json=body) as answer:
        answer.raise_for_status()
        async for line in answer.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                times.append(time.perf_counter())
    return times


def inter_token(url: str, bodies: list[dict]) -> dict[str, float]:
    """All `bodies` streamed at once: the gaps between each stream's events (ms)."""

    async def run() -> list[list[float]]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            return await asyncio.gather(*(_event_times(client, url, b) for b in bodies))

    load = os.getloadavg()[0]
    streams = asyncio.run(run())
    gaps = sorted((b - a) * 1000 for s in streams for a, b in itertools.pairwise(s))
    first, last = min(s[0] for s in streams), max(s[-1] for s in streams)
    events = sum(len(s) - 1 for s in streams)
    return {"p50_ms": gaps[len(gaps) // 2], "p90_ms": gaps[int(len(gaps) * 0.9)],
            "events_per_s": events / (last - first), "load_avg": load}  # fmt: skip
