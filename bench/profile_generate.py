"""Where a decode step's time goes: torch.profiler over the engine's own steps on SmolLM2.

Run: .venv/bin/python bench/profile_generate.py [--dtype bfloat16] [--out bench/results/x.md]
The engine is driven in this thread (no server, no HTTP): 16 sequences of 64 prompt tokens are
prefilled, then --steps decode steps are timed, then --profiled more run under torch.profiler.
The table lists the ops by their own time (torch.profiler's key_averages). To profile another
checkout of the engine (a "before"), run this file with PYTHONPATH set to that checkout.

--churn drives the load's own shape instead: 16 clients each send a new 64-token prompt (128
new tokens) when their last ends, so prefills join the decode steps as they do when served.
A base engine and a 16-adapter one run in turn, --rounds times, for the ratio of their tokens/s
and their step times, decode steps and steps with a prefill apart.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from app.engine.predictor import Predictor  # noqa: E402
from app.families import load_family  # noqa: E402
from app.families.decoder.generate.engine import GenerationEngine  # noqa: E402
from app.families.decoder.generate.sampling import SamplingParams  # noqa: E402
from app.families.decoder.gguf import converted_folder, known_gguf  # noqa: E402
from app.lora import LoraAdapter, LoraConfig, LoraModule  # noqa: E402

SEQS, PROMPT = 16, 64


class _Registry:
    """Random rank-8 adapters on q/k/v/o, one per version name ("a0", "a1", ...)."""

    def __init__(self) -> None:
        self.adapters: dict[str, LoraAdapter] = {}

    def on_change(self, _: Any) -> None:
        return None

    def add(self, version: str, base: Any, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        modules = {}
        for name, layer in base.module.named_modules():
            if name.rsplit(".", 1)[-1] in {"q_proj", "k_proj", "v_proj", "o_proj"}:
                w = layer.base_layer.weight if hasattr(layer, "base_layer") else layer.weight
                a = torch.randn(8, w.shape[1], generator=gen) * 0.01
                b = torch.randn(w.shape[0], 8, generator=gen) * 0.01
                modules[name] = LoraModule(a.to(w.dtype), b.to(w.dtype), 2.0)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=tuple(sorted(modules)))
        self.adapters[version] = LoraAdapter(config, modules)

    def load(self, version: str, _param: str) -> tuple[None, LoraAdapter]:
        return None, self.adapters[version]


def _engine(dtype: torch.dtype, cache: Path, adapters: int, pack: bool = True) -> GenerationEngine:
    gguf = known_gguf("SmolLM2-135M-Instruct")
    assert gguf is not None
    folder = converted_folder(gguf, cache)
    family = load_family(folder, torch.device("cpu"), dtype=str(dtype).removeprefix("torch."))  # type: ignore[arg-type]
    base = family.base
    registry = _Registry()
    for i in range(adapters):
        registry.add(f"a{i}", base, i)
    predictor = Predictor(base, registry, 1 << 30)  # type: ignore[arg-type]
    causal = family.causal  # type: ignore[attr-defined]
    return GenerationEngine(predictor, causal, 1 << 30, 32, 4096, 64, 30.0, pack_weights=pack)


async def _profile(args: argparse.Namespace) -> str:
    dtype = getattr(torch, args.dtype)
    engine = _engine(dtype, args.cache, args.adapters, not args.no_pack)
    params = SamplingParams(
        max_tokens=args.steps + args.profiled + 8, temperature=0, ignore_eos=True
    )
    prompt = list(range(100, 100 + PROMPT))
    if args.adapters:  # a different adapter on each sequence, as the mixed load sends
        for i in range(SEQS):
            engine.submit([(prompt, params)], f"a{i % args.adapters}")
    else:
        engine.submit([(prompt, params)] * SEQS, None)
    with engine._cond:
        engine._admit()
    for _ in range(4):  # the prefill, then a few decode steps to warm up
        engine._step()
    start = time.perf_counter()
    for _ in range(args.steps):
        engine._step()
    step_ms = (time.perf_counter() - start) / args.steps * 1000
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.profiled):
            engine._step()
    adapters = f"{args.adapters} adapters (rank 8, q/k/v/o)" if args.adapters else "base only"
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    return (
        f"## {args.label or args.dtype}\n\n"
        f"SmolLM2-135M-Instruct, {args.dtype}, {SEQS} sequences decoding (prompts of {PROMPT}), "
        f"{adapters}, "
        f"threads {torch.get_num_threads()}: a decode step takes {step_ms:.1f} ms "
        f"({SEQS / step_ms * 1000:.0f} tokens/s, mean of {args.steps} steps). "
        f"torch.profiler over {args.profiled} more steps:\n\n```\n{table}\n```\n"
    )


class _Clients:
    """16 clients, each sending its next prompt when its sequence ends (client i on adapter
    a<i>, or all on the base); the first ones stop early at random, so the ends are spread."""

    def __init__(self, engine: GenerationEngine, adapters: bool) -> None:
        self.engine, self.adapters = engine, adapters
        self.rnd = random.Random(0)
        self.steps: dict[str, list[float]] = {"decode": [], "prefill": []}
        self.events = [self._send(i, self.rnd.randrange(1, 129)) for i in range(SEQS)]

    def _send(self, i: int, max_tokens: int = 128) -> Any:
        prompt = [self.rnd.randrange(100, 40000) for _ in range(PROMPT)]
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        (events,) = self.engine.submit([(prompt, params)], f"a{i}" if self.adapters else None)
        return events

    def run(self, steps: int) -> float:
        """Tokens/s over `steps` steps."""
        engine, tokens, start = self.engine, 0, time.perf_counter()
        for _ in range(steps):
            with engine._cond:
                engine._admit()
            kind = (
                "decode"
                if all(s.table.computed >= len(s.tokens) - 1 for s in engine._running if s.table)
                else "prefill"
            )
            before, t0 = engine.tokens_generated, time.perf_counter()
            engine._step()
            self.steps[kind].append(time.perf_counter() - t0)
            tokens += engine.tokens_generated - before
            for i, events in enumerate(self.events):
                if events._seq.finished:
                    self.events[i] = self._send(i)
        return tokens / (time.perf_counter() - start)


async def _churn(args: argparse.Namespace) -> str:
    dtype = getattr(torch, args.dtype)
    base = _Clients(_engine(dtype, args.cache, 0, not args.no_pack), False)
    mixed = _Clients(_engine(dtype, args.cache, 16, not args.no_pack), True)
    for clients in (base, mixed):  # warm: the clients' ends spread over the steps
        clients.run(200)
        clients.steps = {"decode": [], "prefill": []}
    rounds = []
    for _ in range(args.rounds):
        b, m = base.run(args.steps), mixed.run(args.steps)
        rounds.append(f"base {b:.0f}, 16 adapters {m:.0f} tokens/s: {m / b:.2f}")
    lines = [f"## {args.label or 'churn'}", "", f"SmolLM2-135M-Instruct, {args.dtype}, 16 clients "
             f"sending 64-token prompts for 128 tokens each as their last ends, {args.steps} "
             f"steps a round, threads {torch.get_num_threads()}:", ""]  # fmt: skip
    lines += [f"- round {i + 1}: {r}" for i, r in enumerate(rounds)]
    for name, clients in (("base", base), ("16 adapters", mixed)):
        parts = [
            f"{len(v)} {k} steps {sum(v) / max(len(v), 1) * 1000:.1f} ms"
            for k, v in clients.steps.items()
        ]
        lines.append(f"- {name}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profiled", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--label", default="")
    parser.add_argument("--adapters", type=int, default=0, help="one per sequence, in turn")
    parser.add_argument("--no-pack", action="store_true", help="as PACK_WEIGHTS=false")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/loraserve-bench-cache"))
    parser.add_argument("--out", type=Path, default=None, help="append the section to this file")
    parser.add_argument("--churn", action="store_true", help="the served load's shape (above)")
    parser.add_argument("--rounds", type=int, default=3, help="--churn's rounds")
    args = parser.parse_args()
    section = asyncio.run(_churn(args) if args.churn else _profile(args))
    print(section)
    if args.out is not None:
        with args.out.open("a") as out:
            out.write(section + "\n")


if __name__ == "__main__":
    main()
