"""bench/generate.py --peer vllm: the service beside vLLM's CPU backend, in the same run.

Each server runs alone on the machine: started, measured, stopped, then the next; every round
takes them all in this order (each pair a ratio compares sits side by side in time):
  ours_prefix_off  ours, LORASERVE_PREFIX_CACHING=false (only the shared-prompt chats)
  ours             ours, default settings (`loraserve serve` as users run it)
  vllm_bf16        vLLM bf16, tuned for 2 cores (bench/peer_vllm.py)
  vllm_fp32        vLLM fp32, tuned the same
  ours_fp32        ours, LORASERVE_DTYPE=float32
on the same model folder (the .gguf's conversion) and the same 16 PEFT adapters (ours gets them
by upload, vLLM by --lora-modules). On each: a warm-up (every adapter once), TTFT of 64-token
prompts at c=1, one stream's decode tokens/s without and with adapter a03, base only and 16
adapters under wrk at c=16 (as the HF comparison's loads), and the 16 shared-prompt chats (bench/
generate_cases.py says how each is taken). Each case's figure is its median round; each ratio the
median of its rounds' own ratios. A case that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.client import Client
from bench import generate_cases as cases
from bench.generate_load import COMPLETIONS, STREAMS, completion, wrk_load
from bench.harness import bin_path, gguf_env, server
from bench.peer_vllm import errors_in, model_folder, vllm_server

ALL = ("ttft", "stream_base", "stream_adapter", "base", "mixed", "chats")
LABELS = {
    "ours_prefix_off": "ours, LORASERVE_PREFIX_CACHING=false",
    "ours": "ours, default settings",
    "vllm_bf16": "vLLM bf16 tuned",
    "vllm_fp32": "vLLM fp32 tuned",
    "ours_fp32": "ours, LORASERVE_DTYPE=float32",
}
SETTINGS: dict[str, dict[str, str] | str] = {
    "ours_prefix_off": {"LORASERVE_PREFIX_CACHING": "false"},
    "ours": {},
    "vllm_bf16": "bfloat16",
    "vllm_fp32": "float32",
    "ours_fp32": {"LORASERVE_DTYPE": "float32"},
}
CASES = {k: ("chats",) if k == "ours_prefix_off" else ALL for k in LABELS}
# name: numerator (server, case), denominator, target
BF16 = "vLLM bf16 tuned"
RATIOS: dict[str, tuple[tuple[str, str], tuple[str, str], str]] = {
    f"ours base / {BF16} base": (("ours", "base"), ("vllm_bf16", "base"), ">= 1.1"),
    "ours float32 base / vLLM fp32 tuned base": (("ours_fp32", "base"), ("vllm_fp32", "base"), ">= 1"),
    "ours mixed / ours base": (("ours", "mixed"), ("ours", "base"), ">= 0.9"),
    f"ours mixed / {BF16} mixed": (("ours", "mixed"), ("vllm_bf16", "mixed"), ">= 2"),
    f"one stream, no adapter: ours / {BF16}": (("ours", "stream_base"), ("vllm_bf16", "stream_base"), ">= 1.1"),
    f"one stream, adapter a03: ours / {BF16}": (("ours", "stream_adapter"), ("vllm_bf16", "stream_adapter"), ">= 1.1"),
    f"TTFT, 64-token prompt: ours / {BF16}": (("ours", "ttft"), ("vllm_bf16", "ttft"), "<= 1"),
    "16 shared-prompt chats, TTFT p50: ours / ours prefix caching off": (("ours", "chats"), ("ours_prefix_off", "chats"), "<= 0.25"),
}  # fmt: skip


@dataclass
class Setup:
    """What every server start shares."""

    gguf: Path
    folder: Path  # the .gguf's conversion
    tmp: Path
    adapters: dict[str, Path]  # name: PEFT folder
    prompts: list[str]  # 64-token prompts
    system: str  # the chats' shared system message
    venv: Path
    duration: float
    max_duration: float
    ttft_samples: int
    base: str = "SmolLM2-135M-Instruct"


@contextmanager
def started(key: str, setup: Setup, round_: int) -> Iterator[str]:
    """Server `key` started (and its adapters in place); its URL. Stopped on exit."""
    setting = SETTINGS[key]
    run = setup.tmp / f"{key}-{round_}"
    run.mkdir(parents=True)
    if isinstance(setting, str):
        folder = model_folder(setup.folder, setup.tmp / "vllm-model")
        log = run / "vllm.log"
        with vllm_server(setup.venv, folder, setup.base, setting, setup.adapters, log) as url:
            yield url
        if errors := errors_in(log):
            print(f"warning: {len(errors)} errors in {log}, the first: {errors[0]}", flush=True)
        return
    env = {**gguf_env(run, setup.gguf, setup.folder), **setting}
    with server([bin_path("loraserve"), "serve"], env, ready_s=600) as url:
        setup.base = httpx.get(f"{url}/v1/model", timeout=30).json()["name"]
        with Client(url) as client:
            for name, path in setup.adapters.items():
                client.upload_adapter(name, path)
        yield url


def warm(url: str, bodies: list[dict]) -> None:
    """Every body at once with max_tokens 2 (the first batches, every adapter loaded)."""
    cases._streams(url, COMPLETIONS, [{**b, "max_tokens": 2} for b in bodies])


def measure(key: str, url: str, setup: Setup) -> dict[str, Any]:
    """Every case of server `key` on the running server at `url`."""
    kind = "vllm" if key.startswith("vllm") else "ours"
    names, p, n = list(setup.adapters), setup.prompts, setup.ttft_samples
    base_bodies = [completion(t, setup.base) for t in p[:STREAMS]]
    mixed_bodies = [completion(t, a) for t, a in zip(p, names, strict=False)]
    check = completion(p[3], names[3], max_tokens=16)
    ttft_bodies = [completion(t, setup.base) for t in p[STREAMS : STREAMS + n]]
    chats = cases.chat_bodies(setup.base, setup.system, 1 + cases.CHATS)
    steps = {
        "ttft": lambda: cases.ttft(url, ttft_bodies),
        "stream_base": lambda: cases.one_stream(url, completion(p[-1], setup.base)),
        "stream_adapter": lambda: cases.one_stream(url, completion(p[-2], names[3])),
        "base": lambda: load(url, kind, base_bodies, setup),
        "mixed": lambda: load(url, kind, mixed_bodies, setup),
        "chats": lambda: cases.shared_chats(url, chats),
        "check": lambda: {
            "a03": cases.greedy(url, check),
            "base": cases.greedy(url, {**check, "model": setup.base}),
        },
    }
    setting = SETTINGS[key]  # the dtype vLLM was given, or the one ours reports it computes in
    dtype = setting if isinstance(setting, str) else httpx.get(f"{url}/v1/model").json()["dtype"]
    out: dict[str, Any] = {"dtype": dtype}
    warm(url, base_bodies[:1] + mixed_bodies)
    for case in (*CASES[key], "check"):
        try:
            out[case] = steps[case]()
        except Exception as e:  # recorded; the other cases and servers still run
            out[case] = {"error": f"{type(e).__name__}: {e}"}
        print(f"  {key} {case}: {brief(out[case])}", flush=True)
    return out


def load(url: str, kind: str, bodies: list[dict], setup: Setup) -> dict[str, Any]:
    """A wrk load at c=16 as the HF comparison takes it, and what it left in flight drained."""
    before = cases.finished(url, kind)
    encoded = [json.dumps(b).encode() for b in bodies]
    r = wrk_load(url, encoded, setup.duration, STREAMS, setup.max_duration)
    cases.drain(url, kind, before, r)
    return r


def value(r: dict[str, Any]) -> float | None:
    """A case's figure: tokens/s, or a latency's p50 (ms); None for a failed case."""
    return r.get("tokens_per_s", r.get("p50_ms"))


def brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"failed: {r['error'][:300]}"
    if "a03" in r:
        return f"a03 {r['a03']['text']!r}"
    unit = "tokens/s" if "tokens_per_s" in r else "ms"
    return f"{value(r):.1f} {unit}"


Ratio = tuple[float | None, str, bool | None]  # value, target, met (None: not measured)


def run(setup: Setup, rounds: int, servers: list[str]) -> tuple[dict[str, Any], dict[str, Ratio]]:
    """`servers` (keys of LABELS, in its order), round after round: results and ratios."""
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in LABELS if k in servers}
    for i in range(rounds):
        for key in per:
            print(f"round {i + 1}: starting {LABELS[key]}", flush=True)
            t0 = time.monotonic()
            try:
                with started(key, setup, i) as url:
                    ready = time.monotonic() - t0
                    r = {"start_s": ready, **measure(key, url, setup)}
            except Exception as e:  # a server that does not start: its cases fail, the run goes on
                r = {"start_s": time.monotonic() - t0, "error": f"{type(e).__name__}: {e}"}
                print(f"  {key} failed: {r['error']}", flush=True)
            per[key].append(r)
    summary: dict[str, dict[str, Any]] = {}
    for key, rs in per.items():
        summary[key] = {}
        for case in CASES[key]:
            each = [value(r[case]) if case in r else None for r in rs]
            got = [v for v in each if v is not None]
            summary[key][case] = {"median": statistics.median(got) if got else None,
                                  "rounds": each}  # fmt: skip
    ratios: dict[str, Ratio] = {}
    paired: dict[str, list[float]] = {}
    for name, ((ka, ca), (kb, cb), target) in RATIOS.items():
        if ka not in per or kb not in per:
            continue
        a, b = summary[ka][ca]["rounds"], summary[kb][cb]["rounds"]
        paired[name] = [x / y for x, y in zip(a, b, strict=True) if x and y]
        if not paired[name]:
            ratios[name] = (None, target, None)
            continue
        v = statistics.median(paired[name])
        op, bound = target.split()
        ratios[name] = (v, target, v >= float(bound) if op == ">=" else v <= float(bound))
    return {"servers": per, "summary": summary, "paired_ratios": paired}, ratios


def markdown(peer: dict[str, Any], ratios: dict[str, Ratio], meta: dict) -> str:
    heads = {"base": "base c=16 tok/s", "mixed": "16 adapters c=16 tok/s",
             "stream_base": "one stream tok/s", "stream_adapter": "one stream + adapter tok/s",
             "ttft": "TTFT 64-token prompt ms", "chats": "16 shared-prompt chats TTFT p50 ms"}  # fmt: skip
    lines = [f"vLLM CPU peer ({meta['vllm']}) beside the service, each server alone on the "
             f"machine in turn, {meta['rounds']} round(s): medians of rounds, each round in "
             "brackets; start s: to ready, adapters in place. vLLM: VLLM_CPU_KVCACHE_SPACE=2, "
             "VLLM_CPU_OMP_THREADS_BIND=0-1, VLLM_CPU_NUM_OF_RESERVED_CPU=0, tcmalloc and "
             "libiomp5 preloaded, --max-loras 16. Chats: one first, alone, then the 16 at once "
             "(bench/generate_cases.py).", "",
             "| server | " + " | ".join(heads.values()) + " | start s |",
             "|---|" + "---:|" * (len(heads) + 1)]  # fmt: skip
    servers = peer["servers"]
    for key in servers:
        cells = []
        for case in heads:
            s = peer["summary"][key].get(case)
            if s is None:
                cells.append("")
                continue
            each = ", ".join("failed" if v is None else f"{v:.1f}" for v in s["rounds"])
            med = "failed" if s["median"] is None else f"{s['median']:.1f}"
            cells.append(med if len(s["rounds"]) == 1 else f"{med} ({each})")
        starts = ", ".join(f"{r['start_s']:.0f}" for r in servers[key])
        dtypes = "/".join(sorted({r.get("dtype", "?") for r in servers[key]}))
        lines.append(f"| {LABELS[key]} ({dtypes}) | " + " | ".join(cells) + f" | {starts} |")
    lines += ["", "Ratios: the median of each round's own ratio.", "",
              "| ratio | value | each round | target | met |", "|---|---:|---|---:|:---:|"]  # fmt: skip
    for name, (v, target, met) in ratios.items():
        each = ", ".join(f"{x:.2f}" for x in peer["paired_ratios"][name])
        shown, ok = ("n/a", "n/a") if v is None else (f"{v:.2f}", "yes" if met else "no")
        lines.append(f"| {name} | {shown} | {each} | {target} | {ok} |")
    lines += ["", "First round: greedy 16 tokens on adapter a03, whether the adapter moves the "
              "answer's logprob off the base's, and the prefix-cache counters (/metrics) over "
              "the chats:"]  # fmt: skip
    for key, rs in servers.items():
        c, chats = rs[0].get("check", {}), rs[0].get("chats", {})
        if "a03" in c:
            moved = "yes" if abs(c["a03"]["logprob"] - c["base"]["logprob"]) > 1e-3 else "no"
            counters = {k: v for k, v in chats.get("prefix_counters", {}).items()
                        if "external" not in k} or "none"  # fmt: skip
            lines.append(f"- {LABELS[key]}: {c['a03']['text']!r}; logprob moved: {moved}; "
                         f"prefix cache: {counters}")  # fmt: skip
    failed = [f"{LABELS[k]} {c}" for k, rs in servers.items() for r in rs
              for c, v in r.items() if isinstance(v, dict) and "error" in v]  # fmt: skip
    failed += [f"{LABELS[k]} (start)" for k, rs in servers.items() for r in rs if "error" in r]
    if failed:
        lines += ["", "Failed (errors in the json): " + "; ".join(failed) + "."]
    return "\n".join(lines) + "\n"


def vllm_version(venv: Path) -> str:
    """The peer's version, from its dist-info folder's name (nothing of it is imported)."""
    found = sorted(venv.glob("lib/python*/site-packages/vllm_cpu-*.dist-info"))
    return "vllm-cpu " + found[0].name.split("-")[1].removesuffix(".dist") if found else "vllm-cpu"
