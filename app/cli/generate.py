"""`loraserve chat` and `loraserve complete`: a decoder base's answers, printed as they arrive."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.cli.files import read_json
from app.client import Client


def add_generation_commands(sub: Any) -> None:
    """The two subcommands on the CLI's subparsers."""
    for command, what, text_help in (
        ("chat", "chat with the base or an adapter", "the message; default: one a line from stdin, the conversation kept, until an empty line"),
        ("complete", "continue a prompt with the base or an adapter", "the prompt; default: one a line from stdin, each on its own"),
    ):  # fmt: skip
        one = sub.add_parser(command, help=f"{what} (decoder bases), printed as it is generated")
        one.add_argument("message" if command == "chat" else "prompt", nargs="?", help=text_help)
        one.add_argument("--adapter", help="default: the base model")
        if command == "chat":
            one.add_argument("--system", help="a system message to begin the conversation")
        for option, number in (("--max-tokens", int), ("--temperature", float),
                               ("--top-p", float), ("--seed", int)):  # fmt: skip
            one.add_argument(option, type=number, help="default: the service's")
        one.add_argument("--no-stream", action="store_true", help="print the answer once whole")
        bound = one.add_mutually_exclusive_group()
        bound.add_argument("--json-schema", type=Path, metavar="FILE",
                           help="answer JSON valid under the schema in FILE (response_format)")  # fmt: skip
        bound.add_argument("--regex", help="answer text that the pattern matches in full")


def _say(deltas: Iterator[str]) -> str:
    """Print an answer as it arrives, each delta flushed, then a newline; the whole text."""
    parts: list[str] = []
    try:
        for delta in deltas:
            print(delta, end="", flush=True)
            parts.append(delta)
    except BaseException:
        if parts:  # end the half-printed line, so the error starts on its own
            print(flush=True)
        raise
    print(flush=True)
    return "".join(parts)


def _turns(given: str | None) -> Iterator[str]:
    """The one message given, or lines from stdin until EOF or an empty line."""
    if given is not None:
        yield given
        return
    while True:
        if sys.stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return
        yield line.rstrip("\n")


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    given = {"max_tokens": args.max_tokens, "temperature": args.temperature,
             "top_p": args.top_p, "seed": args.seed}  # fmt: skip
    options = {k: v for k, v in given.items() if v is not None}
    if args.json_schema is not None:
        schema = read_json(args.json_schema)
        name = re.sub(r"[^A-Za-z0-9_-]", "_", args.json_schema.stem)[:64] or "schema"
        options["response_format"] = {
            "type": "json_schema", "json_schema": {"name": name, "schema": schema}
        }  # fmt: skip
    if args.regex is not None:
        options["structured_outputs"] = {"regex": args.regex}
    return options


def chat(args: argparse.Namespace, client: Client) -> None:
    options = _sampling(args)
    history = [{"role": "system", "content": args.system}] if args.system else []
    try:
        for message in _turns(args.message):
            history.append({"role": "user", "content": message})
            if args.no_stream:
                answer = client.chat(history, args.adapter, **options)
                deltas = iter([answer["choices"][0]["message"]["content"]])
            else:
                deltas = client.chat_stream(history, args.adapter, **options)
            history.append({"role": "assistant", "content": _say(deltas)})
    except KeyboardInterrupt:  # how a person ends a conversation: no traceback
        raise SystemExit(130) from None


def complete(args: argparse.Namespace, client: Client) -> None:
    options = _sampling(args)
    try:
        for prompt in _turns(args.prompt):
            if args.no_stream:
                answer = client.complete(prompt, args.adapter, **options)
                deltas = iter([answer["choices"][0]["text"]])
            else:
                deltas = client.complete_stream(prompt, args.adapter, **options)
            _say(deltas)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
