"""SmolLM2-135M generation served over HTTP: the service against transformers and PEFT.

Run: .venv/bin/python bench/generate.py [--duration 30] [--rounds 3] [--out bench/results/generate-cpu.json]
Needs wrk (apt-get install wrk). fp32 on CPU; prompts of 64 tokens, 128 new tokens each,
greedy, `ignore_eos`; 16 adapters of rank 8 on q/k/v/o_proj, made by PEFT with B random.
  HF batch     transformers' `generate` on a static batch of 16, in this process (the anchor)
  HF stream    the same on one prompt
  base         the service as users run it (`loraserve serve`, LORASERVE_BASE_MODEL the .gguf,
               default settings) under wrk, 16 connections, POST /v1/completions, not streamed
  mixed        the same server, each request on the next of the 16 adapters
  PEFT         `uvicorn bench.generate:peft_app --factory`: `set_adapter` and `generate` per
               request, one at a time, under the same load
  TTFT         c=1 streamed requests, curl's time to the first byte (the first token's event),
               against one in-process prefill of the same prompt
  ITL          16 streamed requests at once (httpx), the gaps between a stream's events
A request of 128 tokens takes tens of seconds here, and the 16 connections run in step (they
start together and take as long), so a fixed wrk -d would count whole waves or none by luck.
Each load therefore runs at least --duration seconds and stops at the next completion that
closes a wave (every 16th on our server, any on the one-at-a-time PEFT server); tokens/s is
completed requests * 128 / the time of that completion. HF batch, base and mixed are taken in
turn for --rounds rounds; the table gives each case's median round and the ratios the median of
the rounds' own ratios. The conversion of the .gguf is kept
in --cache (a later run starts in seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import httpx
import torch
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as `python bench/generate.py`, bench/ heads the path, and its kernels.py would shadow the
# `kernels` package that transformers imports when one is installed.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

from app.client import Client  # noqa: E402
from app.model.gguf import converted_folder, known_gguf  # noqa: E402
from bench.embeddings import texts  # noqa: E402
from bench.harness import bin_path, lua_strings, server, wrk_exe  # noqa: E402

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


def hf_generate(model: Any, batch: torch.Tensor) -> dict[str, float]:
    """`generate` tokens/s on the static batch `batch` (B, T), NEW_TOKENS each."""
    kw = {"do_sample": False, "pad_token_id": model.config.eos_token_id}
    load = os.getloadavg()[0]
    with torch.inference_mode():
        start = time.perf_counter()
        new = model.generate(batch, attention_mask=torch.ones_like(batch),
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kw)  # fmt: skip
        seconds = time.perf_counter() - start
    tokens = (new.shape[1] - batch.shape[1]) * batch.shape[0]
    return {"tokens_per_s": tokens / seconds, "requests": batch.shape[0], "seconds": seconds,
            "load_avg": load}  # fmt: skip


def prefill_ms(model: Any, ids: torch.Tensor, runs: int = 5) -> float:
    """Median time of one forward over a prompt (1, T), its KV cache kept (a prefill)."""
    times = []
    with torch.inference_mode():
        for _ in range(runs + 1):
            start = time.perf_counter()
            model(ids, use_cache=True)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def write_adapters(model: Any, root: Path, n: int) -> list[Path]:
    """n PEFT adapter folders from `model` (wrapped in place): A as PEFT draws it, B small."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    folders = []
    for i in range(n):
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_A" in name:
                    torch.nn.init.kaiming_uniform_(p, a=5**0.5)
                elif "lora_B" in name:
                    p.normal_(0, 0.02)
        folder = root / f"a{i:02d}"
        peft_model.save_pretrained(folder)
        folders.append(folder)
    return folders


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
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
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
    finally:
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


class PeftCompletion(BaseModel):
    model: str
    prompt: str
    max_tokens: int = 16
    temperature: float = 1.0
    ignore_eos: bool = False


def peft_app() -> Any:
    """The per-request PEFT baseline: `uvicorn bench.generate:peft_app --factory`, with
    PEFT_BASE (a transformers folder) and PEFT_ADAPTERS (a folder of PEFT adapter folders).
    One request at a time (the active adapter is PEFT's global state); a request whose client
    left while it waited is skipped, as the service drops a gone stream."""
    # FastAPI reads the handlers' annotations as strings (this module's __future__ import), so
    # Request must be a module-level name for it to see the request parameter.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.peft_adapters import load_all

    folder = Path(os.environ["PEFT_BASE"])
    model = load_all(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lock = asyncio.Lock()
    app = FastAPI()

    def generate(body: PeftCompletion) -> tuple[str, int, int]:
        ids = tokenizer(body.prompt, return_tensors="pt")["input_ids"]  # (1, T)
        named = body.model in model.peft_config
        if named:
            model.set_adapter(body.model)
        sample = (
            {"do_sample": True, "temperature": body.temperature}
            if body.temperature
            else {"do_sample": False}
        )
        with torch.inference_mode(), nullcontext() if named else model.disable_adapter():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=body.max_tokens,
                                 min_new_tokens=body.max_tokens if body.ignore_eos else None,
                                 pad_token_id=tokenizer.eos_token_id, **sample)  # fmt: skip
        new = out[0, ids.shape[1] :]
        return tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], len(new)

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post(COMPLETIONS)
    async def create_completion(body: PeftCompletion, request: Request) -> Any:
        async with lock:
            if await request.is_disconnected():
                return Response(status_code=499)
            text, prompt, new = await asyncio.to_thread(generate, body)
        return {"object": "text_completion", "model": body.model,
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": new,
                          "total_tokens": prompt + new}}  # fmt: skip

    return app


def median_round(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The sample with the median tokens/s (the lower middle one of an even count)."""
    ranked = sorted(samples, key=lambda r: r["tokens_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "rounds": [r["tokens_per_s"] for r in samples]}


def markdown(results: dict, ratios: dict[str, tuple[float, str, bool]], meta: dict) -> str:
    labels = {
        "hf_batch": "transformers `generate`, static batch of 16 (in process)",
        "hf_stream": "transformers `generate`, one stream (in process)",
        "base": "service, base only, wrk c=16",
        "mixed": "service, 16 adapters (one per request), wrk c=16",
        "peft": "PEFT server, `set_adapter` per request, wrk c=16",
    }
    lines = [f"SmolLM2-135M-Instruct fp32, {meta['machine']}; prompts {PROMPT_TOKENS} tokens, "
             f"{NEW_TOKENS} new (greedy, ignore_eos); {meta['date']}", "",
             "| case | tokens/s | each round | requests | seconds | p50 latency (s) | load avg |",
             "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for key, label in labels.items():
        r = results[key]
        p50 = f"{r['p50_latency_s']:.1f}" if "p50_latency_s" in r else ""
        each = ", ".join(f"{v:.1f}" for v in r.get("rounds", []))
        lines.append(f"| {label} | {r['tokens_per_s']:.1f} | {each} | {r['requests']} | "
                     f"{r['seconds']:.1f} | {p50} | {r['load_avg']:.1f} |")  # fmt: skip
    t, itl = results["ttft"], results["itl"]
    lines += ["", "| latency | ms |", "|---|---:|",
              f"| TTFT, c=1, streamed (median of {len(t['samples_ms'])}) | {t['p50_ms']:.0f} |",
              f"| one prefill of the prompt, in process (median of 5) | {t['prefill_ms']:.0f} |",
              f"| inter-token p50, 16 streams at once | {itl['p50_ms']:.0f} |",
              f"| inter-token p90, 16 streams at once | {itl['p90_ms']:.0f} |",
              f"| (those 16 streams: {itl['events_per_s']:.1f} events/s) | |",
              "", "| ratio | value | target | met |", "|---|---:|---:|:---:|"]  # fmt: skip
    lines.insert(-2, "Ratios: base/HF and mixed/base are medians of each round's own ratio.\n")
    for name, (value, target, met) in ratios.items():
        lines.append(f"| {name} | {value:.2f} | {target} | {'yes' if met else 'no'} |")
    same = results["same_text"]
    lines += ["", f"Service and PEFT, same greedy 16 tokens on adapter a03: {same}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=30, help="least seconds per wrk load")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of HF batch, base, mixed")
    parser.add_argument("--max-duration", type=float, default=240, help="most seconds per load")
    parser.add_argument("--ttft-samples", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "loraserve-bench-models")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "generate-cpu.json"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = known_gguf("SmolLM2-135M-Instruct")
    assert gguf is not None
    folder = converted_folder(gguf, args.cache)  # what the service's first start would write
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts_ = prompts(tokenizer, 4 * STREAMS)
    ids = torch.tensor([tokenizer(t)["input_ids"] for t in texts_[:STREAMS]])  # (16, 64)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, pad_token_id=model.config.eos_token_id)  # warm-up
    results: dict[str, Any] = {"hf_stream": hf_generate(model, ids[:1])}

    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    (tmp / "data" / "models").mkdir(parents=True)
    (tmp / "data" / "models" / folder.name).symlink_to(folder)  # the conversion, already done
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    names = [f.name for f in write_adapters(reference, tmp / "peft", N_ADAPTERS)]
    del reference
    env = {"LORASERVE_BASE_MODEL": str(gguf), "LORASERVE_DATA_DIR": str(tmp / "data"),
           "LORASERVE_ADAPTERS_DIR": str(tmp / "store")}  # fmt: skip
    peft_cmd = [bin_path("uvicorn"), "bench.generate:peft_app", "--factory", "--log-level", "warning"]  # fmt: skip
    peft_env = {"PEFT_BASE": str(folder), "PEFT_ADAPTERS": str(tmp / "peft")}
    with ExitStack() as stack:
        ours = stack.enter_context(server([bin_path("loraserve"), "serve"], env))
        peft = stack.enter_context(server(peft_cmd, peft_env))
        base = httpx.get(f"{ours}/v1/model").json()["name"]
        with Client(ours) as client:
            for name in names:
                client.upload_adapter(name, tmp / "peft" / name)
        base_bodies = [completion(t, base) for t in texts_[:STREAMS]]
        mixed_bodies = [completion(t, n) for t, n in zip(texts_, names, strict=False)]

        # Warm-up: every adapter loaded, one mixed batch, and the PEFT server's first call.
        async def warm() -> None:
            async with httpx.AsyncClient(timeout=300) as c:
                await asyncio.gather(*(c.post(f"{ours}{COMPLETIONS}", json={**b, "max_tokens": 2})
                                       for b in base_bodies[:1] + mixed_bodies))  # fmt: skip

        asyncio.run(warm())
        check = completion(texts_[3], names[3], max_tokens=16)
        texts_out = [httpx.post(f"{u}{COMPLETIONS}", json=check, timeout=300).json()
                     ["choices"][0]["text"] for u in (ours, peft)]  # fmt: skip
        results["same_text"] = "yes" if texts_out[0] == texts_out[1] else f"no: {texts_out}"

        prefill = prefill_ms(model, ids[:1])
        ttft_bodies = [completion(t, base, stream=True) for t in texts_[STREAMS:]]
        samples = ttft_ms(ours, ttft_bodies[: args.ttft_samples])
        results["ttft"] = {"p50_ms": statistics.median(samples), "samples_ms": samples,
                           "prefill_ms": prefill}  # fmt: skip
        print(f"ttft {results['ttft']['p50_ms']:.0f} ms, prefill {prefill:.0f} ms", flush=True)

        # This machine drifts by 10-20% within minutes, so the anchor and both loads are taken
        # in turn, round after round, and each ratio is the median of its rounds' ratios.
        encoded = {k: [json.dumps(b).encode() for b in v]
                   for k, v in (("base", base_bodies), ("mixed", mixed_bodies))}  # fmt: skip
        rounds: list[dict[str, Any]] = []
        for i in range(args.rounds):
            one = {"hf_batch": hf_generate(model, ids)}
            for kind in ("base", "mixed"):
                before = served(ours)
                r = wrk_load(ours, encoded[kind], args.duration, STREAMS, args.max_duration)
                drain_ours(ours, before + r["completed_in_all"] + STREAMS, 3 * r["seconds"] + 30)
                one[kind] = r
            rounds.append(one)
            print(f"round {i + 1}: " + ", ".join(f"{k} {v['tokens_per_s']:.1f}"
                                                 for k, v in one.items()) + " tokens/s", flush=True)  # fmt: skip
        del model
        results["rounds"] = rounds
        for kind in ("hf_batch", "base", "mixed"):
            results[kind] = median_round([r[kind] for r in rounds])
        r = wrk_load(peft, encoded["mixed"], args.duration, 1, args.max_duration)
        httpx.post(f"{peft}{COMPLETIONS}", json={**check, "max_tokens": 1}, timeout=600)  # drain
        results["peft"] = r
        print(f"peft: {r['tokens_per_s']:.1f} tokens/s ({r['requests']} in {r['seconds']:.0f} s)", flush=True)  # fmt: skip
        results["itl"] = inter_token(ours, [{**b, "stream": True} for b in base_bodies])
        print(f"itl p50 {results['itl']['p50_ms']:.0f} ms", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)

    def paired(a: str, b: str) -> float:
        return statistics.median(
            r[a]["tokens_per_s"] / r[b]["tokens_per_s"] for r in results["rounds"]
        )

    ttft = results["ttft"]
    over_peft = results["mixed"]["tokens_per_s"] / results["peft"]["tokens_per_s"]
    ratios = {
        "service base / HF static batch": (paired("base", "hf_batch"), ">=", 0.8),
        "service mixed / service base": (paired("mixed", "base"), ">=", 0.85),
        "service mixed / PEFT server": (over_peft, ">=", 3.0),
        "TTFT / in-process prefill": (ttft["p50_ms"] / ttft["prefill_ms"], "<=", 1.3),
    }
    checked = {k: (v, f"{op} {t:g}", v >= t if op == ">=" else v <= t)
               for k, (v, op, t) in ratios.items()}  # fmt: skip
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "duration_s": args.duration, "rounds": args.rounds, "streams": STREAMS, "adapters": N_ADAPTERS,
            "rank": RANK, "target_modules": TARGETS,
            "server": "loraserve serve, LORASERVE_BASE_MODEL the .gguf, default settings",
            "client": "wrk, 1 thread, on the same machine; httpx for the streams"}  # fmt: skip
    table = markdown(results, checked, meta)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ratios_json = {k: {"value": v, "target": t, "met": m} for k, (v, t, m) in checked.items()}
    args.out.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios_json},
                                   indent=2) + "\n")  # fmt: skip
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
