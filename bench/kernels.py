"""Mixed-adapter batches on the seed model: the stacked path against the base alone and others.

Run: .venv/bin/python bench/kernels.py [--device cpu|cuda] [--quick]
For each batch size x distinct adapters x rank, times (median, ms) one forward of:
  base    the base model alone (the baseline every ratio is against)
  stacked the service's mixed path (StackedBatch: padded blocks, batched products), the batch's
          index build included, over an AdapterStack built beforehand (the engine keeps one and
          reuses it while batches stay within its adapters); `stack ms` is that build, once
  loop    the plain reference path: a Python loop over adapters (MixedBatch)
  merged  one adapter: the batch on its merged weights (copy made beforehand)
Rows are spread evenly over the adapters, in shuffled order.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.families import load_base_model  # noqa: E402
from app.lora import (  # noqa: E402
    AdapterStack,
    LinearFn,
    LoraAdapter,
    LoraConfig,
    LoraModule,
    MixedBatch,
    StackedBatch,
    merge_adapter,
    merged_linear,
    plan_scope,
)
from app.model import resolve_device  # noqa: E402
from app.settings import EMBEDDED_MODEL  # noqa: E402


def forward(model: torch.nn.Module, plan: LinearFn, x: torch.Tensor) -> torch.Tensor:
    """One forward of the (wrapped) base with `plan`, as the service runs it."""
    with plan_scope(plan):
        return model(x)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def timer(device: torch.device, budget_s: float) -> Callable[[Callable[[], object]], float]:
    def measure(fn: Callable[[], object]) -> float:
        for _ in range(3):
            time_once(fn, device)
        samples = [time_once(fn, device)]
        while sum(samples) < budget_s * 1000 and len(samples) < 200:
            samples.append(time_once(fn, device))
        return statistics.median(samples)

    return measure


def interleaved(
    device: torch.device, budget_s: float, fns: dict[str, Callable[[], object]]
) -> dict[str, float]:
    """Median ms of each function, timed in turn round after round: on a shared, noisy machine
    every one of them meets the same noise, so their ratios hold where lone timings drift."""
    for fn in fns.values():
        time_once(fn, device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    while (
        sum(map(sum, samples.values())) < budget_s * 1000 * len(fns)
        or len(samples[next(iter(fns))]) < 5
    ):
        for k, fn in fns.items():
            samples[k].append(time_once(fn, device))
    return {k: statistics.median(v) for k, v in samples.items()}


def make_adapters(n: int, rank: int, device: torch.device, gen: torch.Generator) -> dict:
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=("layer1", "layer2"))
    adapters = {}
    for i in range(n):
        modules = {}
        for name, (n_in, n_out) in (("layer1", (1001, 1000)), ("layer2", (1000, 1000))):
            a = torch.randn(rank, n_in, generator=gen) / n_in
            b = torch.randn(n_out, rank, generator=gen) / rank
            modules[name] = LoraModule(a.to(device), b.to(device), 2.0)
        adapters[f"a{i}"] = LoraAdapter(config, modules)
    return adapters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="only the target configurations")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    base = load_base_model(EMBEDDED_MODEL, device)
    model = base.module
    measure = timer(device, args.budget)
    gen = torch.Generator().manual_seed(0)
    if args.quick:
        grid = [(256, 64, 16), (1024, 256, 16), (256, 1, 16), (1024, 64, 16)]
    else:
        grid = list(itertools.product([1, 32, 256, 1024], [1, 8, 64, 256], [1, 8, 16, 64]))
    rows_out = []
    print(
        f"{'batch':>5} {'adapters':>8} {'rank':>4} {'base ms':>8} {'stacked':>14} {'loop':>14} {'merged':>14}"
    )
    for batch, distinct, rank in grid:
        if distinct > batch:
            continue
        adapters = make_adapters(distinct, rank, device, gen)
        names = list(adapters)
        keys = [names[i % distinct] for i in range(batch)]
        order = torch.randperm(batch, generator=gen).tolist()
        keys = [keys[i] for i in order]
        x = torch.randn(batch, 1001, generator=gen).to(device)
        with torch.inference_mode():
            base_ms = measure(lambda x=x: model(x))
            start = time.perf_counter()
            stack = AdapterStack.build(adapters)
            stack_ms = (time.perf_counter() - start) * 1000
            stacked_ms = measure(
                lambda x=x, keys=keys, stack=stack: forward(
                    model, StackedBatch.build(keys, stack, device).linear(), x
                )
            )

            def loop(x=x, keys=keys, adapters=adapters) -> None:
                mixed = MixedBatch.build(keys, adapters, device)
                mixed.unsort(forward(model, mixed.linear(), mixed.sort(x)))

            loop_ms = measure(loop)
            merged_ms = None
            if distinct == 1:
                weights = merge_adapter(model, adapters[names[0]])
                merged_ms = measure(lambda x=x, w=weights: forward(model, merged_linear(w), x))
        row = {
            "batch": batch, "adapters": distinct, "rank": rank, "base_ms": base_ms,
            "stacked_ms": stacked_ms, "stack_build_ms": stack_ms, "loop_ms": loop_ms, "merged_ms": merged_ms,
            "stacked_over_base": stacked_ms / base_ms, "loop_over_base": loop_ms / base_ms,
            "merged_over_base": merged_ms / base_ms if merged_ms else None,
        }  # fmt: skip
        rows_out.append(row)

        def cell(ms: float | None, base_ms: float = base_ms) -> str:
            return f"{ms:7.3f} {ms / base_ms:5.2f}x" if ms is not None else f"{'-':>14}"

        print(
            f"{batch:>5} {distinct:>8} {rank:>4} {base_ms:8.3f} {cell(stacked_ms):>14} "
            f"{cell(loop_ms):>14} {cell(merged_ms):>14} {stack_ms:8.2f}",
            flush=True,
        )
    out = args.out or ROOT / "bench" / "results" / f"kernels-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    out.write_text(json.dumps({"machine": machine, "rows": rows_out}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
