"""Training speed: the service's trainer against a plain hand-written PyTorch LoRA loop.

Run: .venv/bin/python bench/training.py [--rows 10000 --epochs 5 --rank 1 --batch-size 128]
Both train the same rank-r LoRA on both layers of the seed model, on the same θ + 1 data, with
Adam, the same batch size and epochs. Each run is its own process so that peak memory is its own;
runs alternate and the median time is reported; each process first does a short warm-up run of
its own trainer. Ratio < 1 means the service is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.families import load_base_model  # noqa: E402
from app.families.mlp.seed import make_regression, make_theta  # noqa: E402
from app.model import resolve_device  # noqa: E402
from app.settings import EMBEDDED_MODEL  # noqa: E402
from app.training.trainer import TrainConfig, train_lora  # noqa: E402


class LoRALinear(nn.Module):
    """The textbook LoRA layer: a frozen linear plus a trainable B A, scaled by alpha / r."""

    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T * self.scaling


def plain_loop(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        LoRALinear(model.get_submodule("layer1"), args.rank, args.alpha),
        LoRALinear(model.get_submodule("layer2"), args.rank, args.alpha),
    )
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.learning_rate)
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.epochs):
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for start in range(0, len(x), args.batch_size):
            rows = order[start : start + args.batch_size]
            loss = nn.functional.mse_loss(net(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    loss.item()


def service_trainer(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> None:
    config = TrainConfig(
        rank=args.rank,
        alpha=args.alpha,
        target_modules=("layer1", "layer2"),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
    )
    train_lora(model, config, x, y)


def one_run(which: str, args: argparse.Namespace) -> dict[str, float]:
    """In a child process: load, train once, report seconds and memory."""
    device = resolve_device(args.device)
    base = load_base_model(EMBEDDED_MODEL, device)
    x, y = make_regression(args.rows, make_theta() + 1, seed=101)
    x, y = x.to(device), y.to(device)
    # One short warm-up run, so neither side pays the process's first-call costs in its time.
    warmup = argparse.Namespace(**{**vars(args), "epochs": 1})
    trainer = service_trainer if which == "service" else plain_loop
    trainer(base.module, x[: args.batch_size * 4], y[: args.batch_size * 4], warmup)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before_gpu = torch.cuda.memory_allocated()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    trainer(base.module, x, y, args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seconds": seconds, "peak_rss_mb": peak, "rss_growth_mb": peak - before}
    if device.type == "cuda":
        out["gpu_peak_extra_mb"] = (torch.cuda.max_memory_allocated() - before_gpu) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=["service", "plain"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child, args)))
        return
    forwarded = [a for a in sys.argv[1:] if not a.startswith("--out")]
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "service": []}
    for _ in range(args.repeat):
        for which in ("plain", "service"):
            done = subprocess.run(
                [sys.executable, __file__, *forwarded, "--child", which],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            runs[which].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {}
    for which, results in runs.items():
        summary[which] = {
            key: round(statistics.median(r[key] for r in results), 3) for key in results[0]
        }
    ratio = summary["service"]["seconds"] / summary["plain"]["seconds"]
    print(
        f"LoRA training, seed model, {args.rows} rows, {args.epochs} epochs, rank {args.rank}, "
        f"batch {args.batch_size}, device {args.device} (median of {args.repeat})"
    )
    keys = list(summary["plain"])
    print(f"{'trainer':10s} " + " ".join(f"{k:>16s}" for k in keys))
    for which in ("plain", "service"):
        print(f"{which:10s} " + " ".join(f"{summary[which][k]:16.3f}" for k in keys))
    print(f"time ratio service / plain: {ratio:.3f} (target <= 0.8)")
    device = args.device if args.device != "auto" else str(resolve_device("auto"))
    out = args.out or ROOT / "bench" / "results" / f"training-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "config": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "summary": summary,
        "ratio_service_over_plain": round(ratio, 3),
        "runs": runs,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
