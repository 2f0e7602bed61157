"""`loraserve`: run the service, or drive one over HTTP (adapters, predictions, training, demo)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pydantic_settings import BaseSettings, SettingsConfigDict
from safetensors.torch import load_file, save_file

from app.client import Client, ServiceError


class CliSettings(BaseSettings):
    """Where the service is and the key to use: LORASERVE_URL, LORASERVE_API_KEY."""

    model_config = SettingsConfigDict(env_prefix="LORASERVE_", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run("app.main:app", host=args.host, port=args.port)


def _adapters(args: argparse.Namespace, client: Client) -> None:
    if args.action == "list":
        rows = client.list_adapters()
        print(f"{'name':32s} {'rank':>4s} {'alpha':>6s} {'source':8s} {'bytes':>10s} modules")
        for a in rows:
            print(
                f"{a['name']:32s} {a['rank']:>4d} {a['alpha']:>6g} {a['source']:8s} "
                f"{a['size_bytes']:>10d} {','.join(a['target_modules'])}"
            )
    elif args.action == "upload":
        adapter = client.upload_adapter(args.name, args.path, overwrite=args.overwrite)
        print(f"uploaded {adapter['name']} (rank {adapter['rank']}, sha256 {adapter['sha256']})")
    elif args.action == "download":
        print(f"wrote {client.download_adapter(args.name, args.path)}")
    elif args.action == "delete":
        client.delete_adapter(args.name)
        print(f"deleted {args.name}")


def _read_inputs(path: Path) -> torch.Tensor:
    if path.suffix == ".safetensors":
        return load_file(path)["inputs"]
    data = json.loads(path.read_text())
    rows = data["inputs"] if isinstance(data, dict) else data
    return torch.tensor(rows, dtype=torch.float32)


def _predict(args: argparse.Namespace, client: Client) -> None:
    x = _read_inputs(args.inputs)
    y = client.predict(x, adapter=args.adapter, mode=args.mode)
    if args.out is None:
        print(json.dumps({"outputs": y.tolist()}))
    elif args.out.suffix == ".safetensors":
        save_file({"outputs": y}, args.out)
    else:
        args.out.write_text(json.dumps({"outputs": y.tolist()}))


def _upload_dataset(client: Client, path: Path) -> str:
    tensors = load_file(path)
    return str(client.upload_dataset(tensors["inputs"], tensors["targets"], path.name)["id"])


def _train(args: argparse.Namespace, client: Client) -> None:
    train = _upload_dataset(client, args.data)
    validation = _upload_dataset(client, args.validation) if args.validation else None
    hyperparameters: dict[str, Any] = {
        k: v
        for k, v in {
            "rank": args.rank, "alpha": args.alpha, "epochs": args.epochs,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed,
            "target_modules": args.target_modules.split(",") if args.target_modules else None,
        }.items()
        if v is not None
    }  # fmt: skip
    job = client.create_job(args.name, train, validation, **hyperparameters)
    print(f"job {job['id']} {job['status']}: {json.dumps(job['hyperparameters'])}")
    if args.follow or args.plot:
        job = _follow(client, job)
        if args.plot:
            _plot(client, job["id"], args.plot)
        if job["status"] != "succeeded":
            raise SystemExit(f"job {job['status']}: {job['error']}")


def _follow(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    """A progress bar over the job's steps, and a line per epoch, until it ends."""
    from tqdm import tqdm

    with tqdm(total=job["progress"]["total_steps"], unit="step", desc=job["adapter_name"]) as bar:
        after = None
        while True:
            job = client.get_job(job["id"])
            bar.update(job["progress"]["step"] - bar.n)
            loss = job["progress"]["train_loss"]
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4g}")
            page = client.job_events(job["id"], after=after)
            for event in page["data"]:
                after = event["id"]
                if event["type"] == "metrics":
                    d = event["data"]
                    val = d.get("validation_loss")
                    extra = f", validation_loss {val:.6g}" if val is not None else ""
                    bar.write(f"epoch {d['epoch']}: train_loss {d['train_loss']:.6g}{extra}")
            if job["status"] in ("succeeded", "failed", "cancelled") and not page["has_more"]:
                bar.write(f"job {job['status']}")
                return job
            time.sleep(0.5)


def _plot(client: Client, job_id: str, path: Path) -> None:
    """Training and validation loss per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [e["data"] for e in client.follow(job_id, poll_s=0) if e["type"] == "metrics"]
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [m["train_loss"] for m in metrics], marker="o", label="training")
    if any(m.get("validation_loss") is not None for m in metrics):
        ax.plot(epochs, [m["validation_loss"] for m in metrics], marker="o", label="validation")
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title=f"job {job_id}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def _jobs(args: argparse.Namespace, client: Client) -> None:
    if args.action == "list":
        for job in client.list_jobs(limit=args.limit)["data"]:
            p = job["progress"]
            print(
                f"{job['id']}  {job['status']:10s} {job['adapter_name']:24s} step {p['step']}/{p['total_steps']}"
            )
    else:
        print(client.cancel_job(args.job_id)["status"])


def _demo(args: argparse.Namespace, client: Client) -> None:
    from app.demo import run_demo

    results = run_demo(client.http, rows=args.rows, epochs=args.epochs)
    if results["merged_mse"] >= 0.5:
        raise SystemExit(1)


def parser() -> argparse.ArgumentParser:
    settings = CliSettings()
    top = argparse.ArgumentParser(prog="loraserve", description=__doc__)
    top.add_argument("--url", default=settings.url, help="the service (env LORASERVE_URL)")
    top.add_argument("--api-key", default=settings.api_key, help="env LORASERVE_API_KEY")
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (uvicorn app.main:app)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    adapters = sub.add_parser("adapters", help="list, upload, download, delete adapters")
    actions = adapters.add_subparsers(dest="action", required=True)
    actions.add_parser("list")
    for action, path_help in (
        ("upload", "a PEFT adapter folder"),
        ("download", "a folder to write"),
    ):
        one = actions.add_parser(action)
        one.add_argument("name")
        one.add_argument("path", type=Path, help=path_help)
        if action == "upload":
            one.add_argument("--overwrite", action="store_true")
    actions.add_parser("delete").add_argument("name")

    predict = sub.add_parser("predict", help="predict rows from a .json or .safetensors file")
    predict.add_argument("--inputs", type=Path, required=True)
    predict.add_argument("--adapter")
    predict.add_argument("--mode", default="auto", choices=["auto", "unmerged", "merged"])
    predict.add_argument("--out", type=Path, help=".json or .safetensors; default: print JSON")

    train = sub.add_parser("train", help="train an adapter from safetensors datasets")
    train.add_argument("name", help="the adapter to make")
    train.add_argument("--data", type=Path, required=True, help="safetensors: inputs, targets")
    train.add_argument("--validation", type=Path)
    for flag, kind in (("--rank", int), ("--alpha", float), ("--epochs", int), ("--batch-size", int),
                       ("--learning-rate", float), ("--seed", int), ("--target-modules", str)):  # fmt: skip
        train.add_argument(flag, type=kind)
    train.add_argument("--follow", action="store_true", help="show progress until it ends")
    train.add_argument(
        "--plot", type=Path, help="save the loss per epoch as a PNG (implies --follow)"
    )

    jobs = sub.add_parser("jobs", help="list or cancel training jobs")
    job_actions = jobs.add_subparsers(dest="action", required=True)
    job_actions.add_parser("list").add_argument("--limit", type=int, default=20)
    job_actions.add_parser("cancel").add_argument("job_id")

    demo = sub.add_parser("demo", help="the reference example (theta + 1), over HTTP")
    demo.add_argument("--rows", type=int, default=10_000)
    demo.add_argument("--epochs", type=int, default=10)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "serve":
        _serve(args)
        return
    handlers = {
        "adapters": _adapters,
        "predict": _predict,
        "train": _train,
        "jobs": _jobs,
        "demo": _demo,
    }
    with Client(args.url, api_key=args.api_key) as client:
        try:
            handlers[args.command](args, client)
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
