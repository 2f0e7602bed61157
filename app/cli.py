"""`loraserve`: run the service, or drive one over HTTP (adapters, predictions, chat, training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import torch
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from safetensors.torch import save_file

from app.basekind import PACKAGED_BASES, base_model_problem
from app.cli_files import InputError, read_inputs, read_safetensors, read_text_dataset, write
from app.cli_generate import add_generation_commands, chat, complete
from app.client import Client, ServiceError

# Exit statuses: the service failed or said no, or a file or option given by the user is wrong.
EXIT_SERVICE, EXIT_USAGE = 1, 2


class CliSettings(BaseSettings):
    """Where the service is and the key to use: LORASERVE_URL, LORASERVE_API_KEY."""

    model_config = SettingsConfigDict(env_prefix="LORASERVE_", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None


def _serve(args: argparse.Namespace) -> None:
    """The service, with its settings from the environment; --host/--port win over them."""
    from app.server import run
    from app.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        raise InputError(f"invalid settings: {_first_error(exc)}") from None
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
        raise InputError(f"invalid settings: {_first_error(exc)}") from None


def _worker(args: argparse.Namespace) -> None:
    """A training worker on the shared state of the settings (DATABASE_URL, STORE_URL)."""
    from app.training.process import run_worker

    run_worker(_settings())


def _migrate(args: argparse.Namespace) -> None:
    """Migrate the database and import an older layout; prints what was imported."""
    from app.training.process import print_migration

    print_migration(_settings())


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


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


def _adapters(args: argparse.Namespace, client: Client) -> None:
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
    elif args.action == "delete":
        client.delete_adapter(args.name)
        print(f"deleted {args.name}")


def _predict(args: argparse.Namespace, client: Client) -> None:
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


def _train(args: argparse.Namespace, client: Client) -> None:
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
            _fail(f"job {job['status']}: {error.get('code')}: {error.get('message')}", EXIT_SERVICE)


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
                    val, recall = d.get("validation_loss"), d.get("validation_recall_at_1")
                    extra = f", validation_loss {val:.6g}" if val is not None else ""
                    extra += f", validation recall@1 {recall:.4g}" if recall is not None else ""
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


def _embed(args: argparse.Namespace, client: Client) -> None:
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


def _demo(args: argparse.Namespace, client: Client) -> None:
    from app.demo import run_from_args

    run_from_args(client.http, args)


def _text_demo(args: argparse.Namespace, client: Client) -> None:
    from app.text_demo import run_from_args

    run_from_args(client, args)


def _chat_demo(args: argparse.Namespace, client: Client) -> None:
    from app.chat_demo import run_from_args

    run_from_args(client, args)


def parser(settings: CliSettings | None = None) -> argparse.ArgumentParser:
    settings = settings or CliSettings()
    top = argparse.ArgumentParser(prog="loraserve", description=__doc__)
    top.add_argument("--url", default=settings.url, help="the service (env LORASERVE_URL)")
    top.add_argument("--api-key", default=settings.api_key, help="env LORASERVE_API_KEY")
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (uvicorn app.main:app)")
    serve.add_argument("--host", help="default LORASERVE_HOST or UVICORN_HOST, else 127.0.0.1")
    serve.add_argument("--port", type=int, help="default LORASERVE_PORT or UVICORN_PORT, else 8000")
    serve.add_argument(
        "--base-model",
        type=Path,
        help=f"a base model folder or .gguf file, or a packaged model ({', '.join(PACKAGED_BASES)}); "
        "default LORASERVE_BASE_MODEL, else the embedded seed model",
    )

    on_ray = serve.add_argument_group("Ray Serve (pip install 'loraserve[ray]')")
    on_ray.add_argument(
        "--ray", action="store_true", help="serve on Ray: predictor replicas behind this port"
    )
    on_ray.add_argument(
        "--ray-address", help="a running Ray cluster (ray://... or host:port); default: start one"
    )
    on_ray.add_argument("--replicas", type=int, default=2, help="predictor replicas (2)")
    on_ray.add_argument(
        "--adapters-per-replica", type=int, default=48, help="adapters each replica holds (48)"
    )
    on_ray.add_argument(
        "--trainers", type=int, default=1, help="training workers on Ray (1; 0: none)"
    )

    sub.add_parser("worker", help="run a training worker on the shared state (DATABASE_URL)")
    sub.add_parser("migrate", help="migrate the database, import an older ADAPTERS_DIR and jobs.db")

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

    embed = sub.add_parser("embed", help="embeddings of texts from a text base")
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--file", type=Path, help="more texts, one a line")
    embed.add_argument("--model", help="an adapter (default: the base model)")
    embed.add_argument("--out", type=Path, help="write the JSON here; default: print it")

    add_generation_commands(sub)

    train = sub.add_parser("train", help="train an adapter from a dataset file")
    train.add_argument("name", help="the adapter to make")
    train.add_argument(
        "--data",
        type=Path,
        required=True,
        help="vector bases: .safetensors (inputs, targets); text bases: .jsonl or .json pairs "
        '{"anchor", "positive"}; decoder bases: chat .jsonl, rows {"messages": [...]} or '
        '{"prompt", "completion"}',
    )
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

    from app.demo import add_arguments

    add_arguments(sub.add_parser("demo", help="the reference example (theta + 1), over HTTP"))
    from app.text_demo import add_arguments as add_text_arguments

    add_text_arguments(
        sub.add_parser("text-demo", help="the text example (a jargon adapter), over HTTP")
    )
    from app.chat_demo import add_arguments as add_chat_arguments

    add_chat_arguments(
        sub.add_parser("chat-demo", help="the chat example (SFT of a jargon adapter), over HTTP")
    )
    return top


def _fail(message: str, status: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def demo_main(
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[Client, argparse.Namespace], None],
    argv: list[str] | None = None,
) -> None:
    """`python -m app.demo` and `python -m app.text_demo`: --url, --api-key, the demo's options."""
    settings = cli_settings()
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--url", default=settings.url, help="the service (env LORASERVE_URL)")
    parser.add_argument(
        "--api-key", default=settings.api_key, help="an admin key (env LORASERVE_API_KEY)"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    with failures_reported(args.url), Client(args.url, api_key=args.api_key) as client:
        run(client, args)


def cli_settings() -> CliSettings:
    """LORASERVE_URL and LORASERVE_API_KEY, or one `error:` line when they are malformed."""
    try:
        return CliSettings()
    except ValidationError as exc:
        _fail(f"invalid settings: {_first_error(exc)}", EXIT_USAGE)


@contextmanager
def failures_reported(url: str) -> Iterator[None]:
    """Turn the failures a user can cause or meet into one `error: ...` line and an exit status."""
    try:
        yield
    except ServiceError as exc:
        _fail(str(exc), EXIT_SERVICE)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        _fail(f"bad --url {url!r}: {exc}", EXIT_USAGE)
    except httpx.TransportError as exc:  # refused, reset, timed out
        _fail(f"cannot reach the service at {url}: {exc or type(exc).__name__}", EXIT_SERVICE)
    except InputError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:  # any other local file the command had to read or write
        _fail(str(exc), EXIT_USAGE)


def main(argv: list[str] | None = None) -> None:
    """Run one command; every failure is one `error: ...` line on stderr and a non-zero exit."""
    args = parser(cli_settings()).parse_args(argv)
    handlers = {
        "adapters": _adapters,
        "predict": _predict,
        "train": _train,
        "jobs": _jobs,
        "demo": _demo,
        "embed": _embed,
        "chat": chat,
        "complete": complete,
        "text-demo": _text_demo,
        "chat-demo": _chat_demo,
    }
    with failures_reported(args.url):
        local = {"serve": _serve, "worker": _worker, "migrate": _migrate}
        if args.command in local:
            local[args.command](args)
            return
        with Client(args.url, api_key=args.api_key) as client:
            handlers[args.command](args, client)


if __name__ == "__main__":
    main()
