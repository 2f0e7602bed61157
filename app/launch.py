"""The `loraserve` command's entry: settles OpenMP's spin for --base-model before torch loads.

app.cli imports torch (the client and the file readers need it), and libgomp reads its spin
setting when torch loads, so `loraserve serve --base-model X` must be looked at first.
"""

from __future__ import annotations

import argparse
import os
import sys


def base_model_arg(argv: list[str]) -> str | None:
    """The --base-model of a `serve` command line, else None."""
    if "serve" not in argv:
        return None
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--base-model")
    known, _ = peek.parse_known_args(argv)
    return known.base_model


def main() -> None:
    from app.openmp import choose_spin

    argv = sys.argv[1:]
    choose_spin(base_model_arg(argv) or os.environ.get("LORASERVE_BASE_MODEL"))
    from app.cli import main as cli_main

    cli_main(argv)
