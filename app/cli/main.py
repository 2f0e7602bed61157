"""`loraserve`: run the service, or drive one over HTTP (adapters, predictions, chat, training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli import commands
from app.cli.base import EXIT_SERVICE, EXIT_USAGE, CliSettings, cli_settings, failures_reported
from app.cli.generate import add_generation_commands, chat, complete
from app.client import Client
from app.startup.basekind import PACKAGED_BASES

__all__ = ["EXIT_SERVICE", "EXIT_USAGE", "main", "parser"]


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

    adapters = sub.add_parser("adapters", help="list, upload, download, compose, delete adapters")
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
    compose = actions.add_parser("compose", help="save a composition of adapters as a new one")
    compose.add_argument("name")
    compose.add_argument(
        "sources", nargs="+", metavar="SOURCE[:SCALE]", help="an adapter (or name@version), scale 1"
    )
    compose.add_argument(
        "--method", default="cat", choices=["cat", "linear", "svd", "ties_svd", "dare_ties_svd"]
    )
    compose.add_argument("--rank", type=int, help="svd methods: the rank kept")
    compose.add_argument("--density", type=float, help="ties_svd, dare_ties_svd")
    compose.add_argument("--seed", type=int, help="dare_ties_svd's masks")
    compose.add_argument("--overwrite", action="store_true")

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

    from app.cli.examples.seed import add_arguments

    add_arguments(sub.add_parser("demo", help="the reference example (theta + 1), over HTTP"))
    from app.cli.examples.text import add_arguments as add_text_arguments

    add_text_arguments(
        sub.add_parser("text-demo", help="the text example (a jargon adapter), over HTTP")
    )
    from app.cli.examples.chat import add_arguments as add_chat_arguments

    add_chat_arguments(
        sub.add_parser("chat-demo", help="the chat example (SFT of a jargon adapter), over HTTP")
    )
    return top


def main(argv: list[str] | None = None) -> None:
    """Run one command; every failure is one `error: ...` line on stderr and a non-zero exit."""
    args = parser(cli_settings()).parse_args(argv)
    handlers = {
        "adapters": commands.adapters,
        "predict": commands.predict,
        "train": commands.train,
        "jobs": commands.jobs,
        "demo": commands.demo,
        "embed": commands.embed,
        "chat": chat,
        "complete": complete,
        "text-demo": commands.text_demo,
        "chat-demo": commands.chat_demo,
    }
    with failures_reported(args.url):
        local = {"serve": commands.serve, "worker": commands.worker, "migrate": commands.migrate}
        if args.command in local:
            local[args.command](args)
            return
        with Client(args.url, api_key=args.api_key) as client:
            handlers[args.command](args, client)


if __name__ == "__main__":
    main()
