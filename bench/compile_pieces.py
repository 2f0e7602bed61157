"""Does torch.compile pay on the decoder step's elementwise pieces? Eager against compiled.

Run: .venv/bin/python bench/compile_pieces.py [--out bench/results/generate-compile.md]
The pieces a Llama block runs between its matrix products (RMSNorm, the rotary embedding on
the queries, SiLU(gate) * up), in bf16, compiled by inductor with dynamic shapes (a step's row
count changes every step), at a decode step's row count (16), a prompt's (64) and a long
prefill's (1024). Also the first compile's seconds, and the next process's (from the cache).
The whole forward is not compiled: its per-call plan (which adapter on which row) is Python
that dynamo would break the graph on at every targeted layer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROWS = (16, 64, 1024)


def rms_norm(x: Tensor, w: Tensor) -> Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return w * h.to(x.dtype)


def rotary(q: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = q.shape[-1] // 2
    return q * cos + torch.cat((-q[..., half:], q[..., :half]), -1) * sin


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up


def _us(fn: Callable[[], object], n: int = 3000) -> float:
    for _ in range(50):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def measure() -> str:
    bf = torch.bfloat16
    pieces = {"RMSNorm": rms_norm, "rotary (q)": rotary, "SiLU(gate) * up": silu_mul}
    compiled = {k: torch.compile(f, dynamic=True) for k, f in pieces.items()}
    lines = [
        "| piece | rows | eager us | compiled us | compiled / eager |",
        "|---|---:|---:|---:|---:|",
    ]
    start = time.perf_counter()
    first = 0.0
    with torch.inference_mode():
        for n in ROWS:
            args = {
                "RMSNorm": (torch.randn(n, 576, dtype=bf), torch.randn(576, dtype=bf)),
                "rotary (q)": (
                    torch.randn(n, 9, 64, dtype=bf),
                    torch.randn(n, 1, 64, dtype=bf),
                    torch.randn(n, 1, 64, dtype=bf),
                ),
                "SiLU(gate) * up": (torch.randn(n, 1536, dtype=bf), torch.randn(n, 1536, dtype=bf)),
            }
            if not first:
                for k, f in compiled.items():
                    f(*args[k])
                first = time.perf_counter() - start
            for k, f in pieces.items():
                a = args[k]
                eager, comp = _us(lambda f=f, a=a: f(*a)), _us(lambda k=k, a=a: compiled[k](*a))
                lines.append(f"| {k} | {n} | {eager:.1f} | {comp:.1f} | {comp / eager:.2f} |")
    return f"first compile of the three: {first:.1f} s\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure())
        return
    cache = tempfile.mkdtemp(prefix="inductor-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    runs = [
        subprocess.run(
            [sys.executable, __file__, "--child"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for _ in range(2)
    ]
    report = (
        f"# torch.compile on the step's elementwise pieces (bf16, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__})\n\n## a cold cache\n\n{runs[0]}\n\n"
        f"## the next process (the cache on disk)\n\n{runs[1]}\n"
    )
    print(report)
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
