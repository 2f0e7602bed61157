"""Re-create the embedded seed model: `python -m app.families.mlp.seed --out models/seed-linear`.

The seed example is linear regression, y = X θ, learned by two stacked linear layers
(1001 -> 1000 -> 1000, no bias). The LoRA example then shifts θ by one everywhere: the
new targets differ from the old by X · 1, a rank-1 change, which a rank-1 adapter can learn.

The run is deterministic: fixed seeds and one CPU thread (float sums then always happen in the
same order), so with the pinned torch it writes the committed model.safetensors byte for byte.
`--check` recomputes the files and compares their sha256 with a folder's, writing nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor

from app.families.mlp.config import ModelConfig
from app.families.mlp.module import build_module

SEED_CONFIG = ModelConfig(architecture="mlp", sizes=[1001, 1000, 1000], bias=False)
SEED = 0
TARGET_MSE = 0.01
FILES = ("config.json", "model.safetensors")


def make_theta(seed: int = SEED, config: ModelConfig = SEED_CONFIG) -> Tensor:
    """The true coefficients θ, (input_dim, output_dim), from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(config.sizes[0], config.sizes[-1], generator=gen)


def make_regression(rows: int, theta: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Inputs X ~ N(0, 1) of shape (rows, in) and targets X θ of shape (rows, out)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, theta.shape[0], generator=gen)
    return x, x @ theta


def pretrain(
    rows: int,
    max_epochs: int,
    target_mse: float,
    seed: int = SEED,
    config: ModelConfig = SEED_CONFIG,
) -> torch.nn.Module:
    """Adam, batch 128, until the training MSE falls under `target_mse`; on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # more threads split sums differently, and the last bits change
    try:
        torch.manual_seed(seed)
        theta = make_theta(seed, config)
        x, y = make_regression(rows, theta, seed + 1)
        model = build_module(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
        gen = torch.Generator().manual_seed(seed + 2)
        for epoch in range(1, max_epochs + 1):
            start = time.perf_counter()
            order = torch.randperm(rows, generator=gen)
            for i in range(0, rows, 128):
                idx = order[i : i + 128]
                loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                mse = torch.nn.functional.mse_loss(model(x), y).item()
            scheduler.step(mse)
            lr = optimizer.param_groups[0]["lr"]
            took = time.perf_counter() - start
            print(f"epoch {epoch:3d}  mse {mse:10.4f}  lr {lr:.1e}  {took:.1f}s", flush=True)
            if mse < target_mse:
                break
        return model
    finally:
        torch.set_num_threads(threads)


def model_files(
    rows: int = 10_000,
    max_epochs: int = 300,
    target_mse: float = TARGET_MSE,
    config: ModelConfig = SEED_CONFIG,
) -> dict[str, bytes]:
    """The base model folder's two files, as bytes: config.json and model.safetensors."""
    model = pretrain(rows, max_epochs, target_mse, config=config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return {
        "config.json": config.to_json().encode(),
        "model.safetensors": save(state, metadata={"seed": str(SEED)}),
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def differences(folder: Path, files: dict[str, bytes]) -> list[str]:
    """One line per file of `folder` whose sha256 is not that of the recomputed bytes."""
    lines = []
    for name, data in files.items():
        path = folder / name
        have = sha256(path.read_bytes()) if path.is_file() else "missing"
        if have != sha256(data):
            lines.append(f"{path}: sha256 {have}, recomputed {sha256(data)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/seed-linear"))
    parser.add_argument(
        "--check", action="store_true", help="recompute and compare with --out; write nothing"
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--target-mse", type=float, default=TARGET_MSE)
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(s) for s in text.split(",")],
        default=SEED_CONFIG.sizes,
        help="layer sizes, comma-separated (default: the seed model's 1001,1000,1000)",
    )
    args = parser.parse_args(argv)
    config = ModelConfig(architecture="mlp", sizes=args.sizes, bias=False)
    files = model_files(args.rows, args.max_epochs, args.target_mse, config)
    if args.check:
        wrong = differences(args.out, files)
        for line in wrong:
            print(f"error: {line}", file=sys.stderr)
        if wrong:
            raise SystemExit(1)
        print(f"{args.out}: " + ", ".join(f"{n} sha256 {sha256(d)}" for n, d in files.items()))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    print(f"wrote {args.out}: model.safetensors sha256 {sha256(files['model.safetensors'])}")


if __name__ == "__main__":
    main()
