"""Why a lone one-row predict cannot come within 2x of `GET /healthz` here (issue 10).

Run: .venv/bin/python bench/cold.py [--gap-ms 2] [--n 1000]
One row through the embedded seed model (1001 -> 1000 -> 1000, 8 MB of fp32 weights), timed
back to back, and again after the thread has slept `--gap-ms` (about what one HTTP round trip at
concurrency 1 leaves between two forwards) or spun for as long. A one-row product reads every
weight once, so its cost is the time to bring 8 MB to the cores; back to back they stay in the
last-level cache, after a gap on this shared virtual machine they have left it. The same
script reports the bytes a 64-adapter rank-16 stack adds to a mixed batch, next to the base's.
Writes bench/results/cold-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.families import load_base_model  # noqa: E402
from app.settings import EMBEDDED_MODEL  # noqa: E402
from bench.kernels import make_adapters  # noqa: E402


def timed(forward: Callable[[], object], pause: Callable[[], None], n: int) -> float:
    samples = []
    for _ in range(n):
        pause()
        start = time.perf_counter()
        forward()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def spin(seconds: float) -> Callable[[], None]:
    def pause() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return pause


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    base = load_base_model(EMBEDDED_MODEL, torch.device("cpu"))
    x = torch.randn(1, 1001)

    def forward() -> object:
        with torch.inference_mode():
            return base.module(x)

    gap = args.gap_ms / 1000
    for _ in range(50):
        forward()
    ms = {
        "back to back": timed(forward, lambda: None, args.n),
        f"after {args.gap_ms:g} ms asleep": timed(forward, lambda: time.sleep(gap), args.n),
        f"after {args.gap_ms:g} ms spinning": timed(forward, spin(gap), args.n),
    }
    base_bytes = sum(p.numel() * p.element_size() for p in base.module.parameters())
    adapters = make_adapters(64, 16, torch.device("cpu"), torch.Generator().manual_seed(0))
    stack_bytes = sum(
        (m.lora_A.numel() + m.lora_B.numel()) * m.lora_A.element_size()
        for adapter in adapters.values()
        for m in adapter.modules.values()
    )
    for label, value in ms.items():
        print(f"one row, {label:24s} {value:6.3f} ms (median of {args.n})")
    print(f"base weights {base_bytes / 2**20:.1f} MiB; 64 rank-16 adapters "
          f"{stack_bytes / 2**20:.1f} MiB")  # fmt: skip
    out = {
        "meta": {"torch": torch.__version__, "threads": torch.get_num_threads(), "n": args.n},
        "one_row_ms": ms,
        "base_weight_bytes": base_bytes,
        "stack_64x16_bytes": stack_bytes,
    }
    (ROOT / "bench" / "results" / "cold-cpu.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
