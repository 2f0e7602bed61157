"""The commands of `loraserve`: each takes its parsed arguments (and a client, when it talks to
a running service)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from app.cli.base import EXIT_SERVICE, fail, first_error
from app.cli.files import InputError, read_inputs, read_safetensors, read_text_dataset, write
from app.client import Client
from app.startup.basekind import base_model_problem


def serve(args: argparse.Namespace) -> None:
    """The service, with its settings from the environment; --host/--port win over them."""
    from app.server import run
    from app.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        raise InputError(f"invalid settings: {first_error(exc)}") from None
    given = (("host", args.host), ("port", args.port), ("base_model", args.base_model))
    overrides = {k: v for k, v in given if v is not None}
    settings = settings.model_copy(update=overrides)
    problem = None if args.ray_address else base_model_problem(settings.base_model)
    if problem is not None:  # one line now, not a traceback once the service starts
        raise InputError(problem)
    if not args.ray:
        run(settings)
        return
    if importlib.util.find_spec("ray") is None:
        raise InputError("--ray needs Ray Serve: pip install 'loraserve[ray]'")
    from app.deploy import local

    app_args: dict[str, Any] = {"predictors": args.replicas, "trainers": args.trainers}
    app_args["adapters_per_replica"] = args.adapters_per_replica
    if args.base_model is not None:
        app_args["settings"] = {"base_model": str(args.base_model.resolve())}
    local.run(settings, args.ray_address, app_args)


def _settings() -> Any:
    from app.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        raise InputError(f"invalid settings: {first_error(exc)}") from None


def worker(args: argparse.Namespace) -> None:
    """A training worker on the shared state of the settings (DATABASE_URL, STORE_URL)."""
    from app.worker import run_worker

    run_worker(_settings())


def migrate(args: argparse.Namespace) -> None:
    """Migrate the database and import an older layout; prints what was imported."""
    from app.worker import print_migration

    print_migration(_settings())


def _adapter_row(a: dict[str, Any]) -> str:
    """One line of `adapters list`: a broken adapter's unknown fields are '-', then its error."""

    def shown(key: str, spec: str) -> str:
        return "-" if a.get(key) is None else format(a[key], spec)

    modules = ",".join(a["target_modules"]) if a.get("target_modules") else "-"
    if a.get("error"):
        modules += f"  ({a['error'].get('code')}: {a['error'].get('message')})"
    return (
        f"{a['name']:32s} {a.get('status', '-'):6s} {shown('rank', 'd'):>4s} "
        f"{shown('alpha', 'g'):>6s} {a.get('source', '-'):8s} {shown('size_bytes', 'd'):>10s} "
        f"{modules}"
    )


def adapters(args: argparse.Namespace, client: Client) -> None:
    if args.action == "list":
        print(
            f"{'name':32s} {'status':6s} {'rank':>4s} {'alpha':>6s} {'source':8s} {'bytes':>10s} modules"
        )
        for a in client.list_adapters():
            print(_adapter_row(a))
    elif args.action == "upload":
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (args.path / name).is_file():
                raise InputError(f"{args.path} is not a PEFT adapter folder: it has no {name}")
        adapter = client.upload_adapter(args.name, args.path, overwrite=args.overwrite)
        print(f"uploaded {adapter['name']} (rank {adapter['rank']}, sha256 {adapter['sha256']})")
    elif args.action == "download":
        print(f"wrote {client.download_adapter(args.name, args.path)}")
    elif args.action == "compose":
        made = client.compose_adapter(
            args.name, [_source(s) for s in args.sources], args.method, args.rank, args.density,
            args.seed, args.overwrite,
        )  # fmt: skip
        if made.get("object") == "composition.job":
            made = _composed_by_job(client, made)
        print(f"composed {made['name']} (rank {made['rank']}, version {made['version']})")
    elif args.action == "delete":
        client.delete_adapter(args.name)
        print(f"deleted {args.name}")


def _source(text: str) -> tuple[str, float]:
    """`name`, `name@version`, either with `:scale` (a version id holds no colon)."""
    name, colon, scale = text.rpartition(":")
    if not colon:
        return text, 1.0
    try:
        return name, float(scale)
    except ValueError:
        raise InputError(f"{text!r}: the scale after ':' must be a number") from None


def predict(args: argparse.Namespace, client: Client) -> None:
    x = read_inputs(args.inputs)
    y = client.predict(x, adapter=args.adapter, mode=args.mode)
    if args.out is None:
        print(json.dumps({"outputs": y.tolist()}))
    elif args.out.suffix == ".safetensors":
        write(args.out, lambda path: save_file({"outputs": y}, path))
    else:
        write(args.out, lambda path: path.write_text(json.dumps({"outputs": y.tolist()})))


def _upload(client: Client, path: Path, data: dict[str, torch.Tensor] | bytes) -> str:
    if isinstance(data, bytes):
        return str(client.upload_pairs(path)["id"])
    return str(client.upload_dataset(data["inputs"], data["targets"], path.name)["id"])


def train(args: argparse.Namespace, client: Client) -> None:
    # Read every file, and check the plot can be drawn, before anything reaches the service.
    paths = [p for p in (args.data, args.validation) if p is not None]
    datasets = [
        read_text_dataset(p) if p.suffix in (".jsonl", ".json") else
        read_safetensors(p, ("inputs", "targets"))
        for p in paths
    ]  # fmt: skip
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'loraserve[plot]'") from None
    ids = [_upload(client, p, d) for p, d in zip(paths, datasets, strict=True)]
    train, validation = ids[0], (ids[1] if args.validation else None)
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
            error = job["error"] or {}
            fail(f"job {job['status']}: {error.get('code')}: {error.get('message')}", EXIT_SERVICE)


def _follow(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    """A progress bar over the job's steps, and a line per epoch, until it ends."""
    from tqdm import tqdm

    with tqdm(total=job["progress"]["total_steps"], unit="step", desc=job["adapter_name"]) as bar:
        for now, events in client.watch(job["id"]):
            job = now
            bar.update(job["progress"]["step"] - bar.n)
            loss = job["progress"]["train_loss"]
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4g}")
            for d in (e["data"] for e in events if e["type"] == "metrics"):
                val, recall = d.get("validation_loss"), d.get("validation_recall_at_1")
                extra = f", validation_loss {val:.6g}" if val is not None else ""
                extra += f", validation recall@1 {recall:.4g}" if recall is not None else ""
                bar.write(f"epoch {d['epoch']}: train_loss {d['train_loss']:.6g}{extra}")
        bar.write(f"job {job['status']}")
        return job


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


def jobs(args: argparse.Namespace, client: Client) -> None:
    if args.action == "list":
        for job in client.list_jobs(limit=args.limit)["data"]:
            p = job["progress"]
            print(
                f"{job['id']}  {job['status']:10s} {job['adapter_name']:24s} step {p['step']}/{p['total_steps']}"
            )
    else:
        print(client.cancel_job(args.job_id)["status"])


def embed(args: argparse.Namespace, client: Client) -> None:
    texts = list(args.texts)
    if args.file is not None:
        try:
            texts += [line for line in args.file.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {args.file}: {exc}") from None
    if not texts:
        raise InputError("give texts as arguments or --file (one text a line)")
    vectors = client.embed(texts, model=args.model).tolist()
    body = json.dumps({"embeddings": vectors})
    if args.out is None:
        print(body)
    else:
        write(args.out, lambda path: path.write_text(body))


def demo(args: argparse.Namespace, client: Client) -> None:
    from app.cli.examples.seed import run_from_args

    run_from_args(client, args)


def text_demo(args: argparse.Namespace, client: Client) -> None:
    from app.cli.examples.text import run_from_args

    run_from_args(client, args)


def chat_demo(args: argparse.Namespace, client: Client) -> None:
    from app.cli.examples.chat import run_from_args

    run_from_args(client, args)


def _composed_by_job(client: Client, job: dict, poll_s: float = 0.5) -> dict:
    """A large composition is a job: followed to its end, its adapter then."""
    print(f"queued as job {job['id']}", flush=True)
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(poll_s)
        job = client.composition_job(job["id"])
    if job["status"] != "succeeded":
        why = f": {job['error']['message']}" if job["error"] else ""
        fail(f"job {job['id']} {job['status']}{why}", EXIT_SERVICE)
    return dict(client.get_adapter(job["adapter_name"]))
