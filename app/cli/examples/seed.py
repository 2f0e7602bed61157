"""The reference example, end to end over HTTP: `python -m app.cli.examples.seed --url http://127.0.0.1:8000`.

With auth on, pass an admin key (`--api-key`, or LORASERVE_API_KEY): the demo uploads datasets
and starts a training job.

The seed model learned y = X θ. New data come from θ + 1, where the base model is off by about
1000 in MSE. A rank-1 LoRA on both layers, trained by the service's job API, brings it back under
0.5, served both unmerged and merged.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from typing import Any

import torch

from app.cli.base import demo_main
from app.client import Client
from app.families.mlp.seed import SEED_CONFIG, make_regression, make_theta

Print = Callable[[str], None]


def predict(
    client: Client, x: torch.Tensor, adapter: str | None, mode: str, chunk: int = 500
) -> torch.Tensor:
    """Outputs of rows `x`, `chunk` rows a request (under the service's rows per request)."""
    return torch.cat([client.predict(rows, adapter=adapter, mode=mode) for rows in x.split(chunk)])


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.mse_loss(a, b).item()


def _event_line(event: dict[str, Any]) -> str:
    if event["type"] != "metrics":
        return f"  {event['message']}"
    d = event["data"]
    val = d.get("validation_loss")
    return (
        f"  epoch {d['epoch']:>3}  step {d['step']:>5}/{d['total_steps']}"
        f"  train_loss {d['train_loss']:10.4f}"
        + (f"  validation_loss {val:10.4f}" if val is not None else "")
    )


def run_demo(
    client: Client,
    rows: int = 10_000,
    validation_rows: int = 1_000,
    epochs: int = 10,
    learning_rate: float = 1e-2,
    adapter_name: str | None = None,
    out: Print = print,
) -> dict[str, float]:
    """Run the example against a service; returns the MSEs it printed."""
    model = client.model()
    sizes = SEED_CONFIG.sizes
    if (model["input_dim"], model["output_dim"]) != (sizes[0], sizes[-1]):
        raise SystemExit(
            f"error: the demo needs the seed model ({sizes[0]} -> {sizes[-1]}), "
            f"not {model['input_dim']} -> {model['output_dim']}"
        )
    theta = make_theta() + 1  # the new task: every coefficient shifted by one
    x, y = make_regression(rows, theta, seed=101)
    x_val, y_val = make_regression(validation_rows, theta, seed=102)
    out(f"new data from theta + 1: {rows} training rows, {validation_rows} validation rows")
    train_id = client.upload_dataset(x, y, "theta-plus-one-train.safetensors")["id"]
    val_id = client.upload_dataset(x_val, y_val, "theta-plus-one-validation.safetensors")["id"]

    base_mse = mse(predict(client, x_val, None, "unmerged"), y_val)
    out(f"base model MSE on the new data: {base_mse:.2f}")

    name = adapter_name or f"theta-plus-one-{uuid.uuid4().hex[:6]}"
    job = client.create_job(
        name, train_id, val_id, rank=1, alpha=1.0, target_modules=["layer1", "layer2"],
        epochs=epochs, batch_size=128, learning_rate=learning_rate,
    )  # fmt: skip
    out(f"training rank-1 adapter {name!r} on layer1 and layer2 (job {job['id']})")
    start = time.perf_counter()
    for event in client.follow(job["id"]):
        out(_event_line(event))
    job = client.get_job(job["id"])
    if job["status"] != "succeeded":
        error = job["error"] or {}
        raise SystemExit(
            f"error: the job {job['status']}: {error.get('code')}: {error.get('message')}"
        )
    out(f"trained in {time.perf_counter() - start:.1f}s")

    results = {"base_mse": base_mse}
    for mode in ("unmerged", "merged"):
        results[f"{mode}_mse"] = mse(predict(client, x_val, name, mode), y_val)
        out(f"adapter MSE on the new data, {mode}: {results[f'{mode}_mse']:.4f}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, shared by `python -m app.cli.examples.seed` and `loraserve demo`."""
    parser.add_argument("--rows", type=int, default=10_000, help="training rows")
    parser.add_argument("--validation-rows", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--adapter-name", default=None, help="default: a new random name")
    parser.add_argument(
        "--target-mse", type=float, default=0.5, help="fail unless the adapter's MSE is under it"
    )


def run_from_args(client: Client, args: argparse.Namespace) -> None:
    """Run the demo with the parsed options; exit non-zero if the adapter misses the target."""
    results = run_demo(
        client,
        rows=args.rows,
        validation_rows=args.validation_rows,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        adapter_name=args.adapter_name,
    )
    if not results["merged_mse"] < args.target_mse:
        raise SystemExit(
            f"error: the adapter's MSE {results['merged_mse']:.4f} is not under {args.target_mse:g}"
        )


def main(argv: list[str] | None = None) -> None:
    demo_main(__doc__ or "", add_arguments, run_from_args, argv)


if __name__ == "__main__":
    main()
