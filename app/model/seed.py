"""Re-create the embedded seed model: `python -m app.model.seed --out models/seed-linear`.

The seed example is linear regression, y = X θ, learned by two stacked linear layers
(1001 -> 1000 -> 1000, no bias). The LoRA example then shifts θ by one everywhere: the
new targets differ from the old by X · 1, a rank-1 change, which a rank-1 adapter can learn.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from app.model.config import ModelConfig
from app.model.loader import build_module

SEED_CONFIG = ModelConfig(architecture="mlp", sizes=[1001, 1000, 1000], bias=False)
SEED = 0


def make_theta(seed: int = SEED) -> Tensor:
    """The true coefficients θ, (input_dim, output_dim), from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(SEED_CONFIG.sizes[0], SEED_CONFIG.sizes[-1], generator=gen)


def make_regression(rows: int, theta: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Inputs X ~ N(0, 1) of shape (rows, in) and targets X θ of shape (rows, out)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, theta.shape[0], generator=gen)
    return x, x @ theta


def pretrain(rows: int, max_epochs: int, target_mse: float, seed: int = SEED) -> torch.nn.Module:
    """Adam, batch 128, until the training MSE falls under `target_mse`."""
    torch.manual_seed(seed)
    theta = make_theta(seed)
    x, y = make_regression(rows, theta, seed + 1)
    model = build_module(SEED_CONFIG)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/seed-linear"))
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--target-mse", type=float, default=0.05)
    args = parser.parse_args()
    model = pretrain(args.rows, args.max_epochs, args.target_mse)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(SEED_CONFIG.to_json())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, args.out / "model.safetensors", metadata={"seed": str(SEED)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
