"""The `loraserve` command's entry: settles OpenMP's spin for --base-model before torch loads,
and refuses a base model that names nothing before torch costs seconds to load.

app.cli imports torch (the client and the file readers need it), and libgomp reads its spin
setting when torch loads, so `loraserve serve --base-model X` must be looked at first.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2  # app.cli's status for a wrong option (importing it would load torch)


def base_model_arg(argv: list[str]) -> str | None:
    """The --base-model of a `serve` command line, else None."""
    if "serve" not in argv:
        return None
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--base-model")
    known, _ = peek.parse_known_args(argv)
    return known.base_model


def serve_problem(argv: list[str]) -> str | None:
    """Why the base model of a `serve` command line (--base-model, else LORASERVE_BASE_MODEL)
    names nothing servable; None when it may (the loader judges the files) or for other
    commands."""
    from app.startup.basekind import base_model_problem
    from app.startup.openmp import base_model_named

    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--url")
    peek.add_argument("--api-key")
    peek.add_argument("command", nargs="?")
    known, rest = peek.parse_known_args(argv)
    if known.command != "serve" or {"-h", "--help"} & set(rest):
        return None
    if any(a == "--ray-address" or a.startswith("--ray-address=") for a in rest):
        return None  # a remote cluster's nodes hold the base model, not this machine
    base_model = base_model_named(base_model_arg(argv))
    return base_model_problem(base_model) if base_model else None


def main() -> None:
    from app.startup.openmp import base_model_named, choose_spin

    argv = sys.argv[1:]
    problem = serve_problem(argv)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    choose_spin(base_model_named(base_model_arg(argv)))
    from app.cli.main import main as cli_main

    cli_main(argv)
