"""How long torch's idle OpenMP workers spin, chosen from the base model before torch loads.

libgomp reads GOMP_SPINCOUNT once, when torch loads it, and its workers then spin that many
rounds after each parallel region before they sleep. The two kinds of base want opposite things:
- The predict path (mlp and encoder bases) runs a short batch, then the event loop parses the
  next requests on the same two cores. Spinning workers take that CPU: without spin the
  service served 29-33% more one-row requests/s at c=64 (bench/spin.py). So: 0.
- A decoder's generation step is a long chain of small ops on one thread, about a thousand per
  step, with the event loop mostly idle. Workers that sleep after each op cost a futex wake-up
  and an idle core every time: served with 0, SmolLM2 made 69 tokens/s over 16 adapters and
  113 on the base; with libgomp's default, 125-131 and 141-147 (bench/generate.py). So: the default.
A value the user sets wins. The value chosen here is marked in the environment too, so that a
process this one starts (a server that a benchmark or a test launches) chooses again for its own
base instead of taking an inherited choice for the user's. To force a value on such a child,
unset LORASERVE_CHOSE_GOMP_SPINCOUNT in its environment as well.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from app.startup.basekind import names_decoder

SPIN_VAR = "GOMP_SPINCOUNT"
MARK_VAR = "LORASERVE_CHOSE_GOMP_SPINCOUNT"  # holds the value choose_spin wrote
NO_SPIN = "0"

log = logging.getLogger(__name__)


def base_model_named(given: str | Path | None = None) -> str | Path | None:
    """The base model a process will serve, as far as it is known before torch loads: the one
    given (a --base-model), else LORASERVE_BASE_MODEL's."""
    return given or os.environ.get("LORASERVE_BASE_MODEL")


def choose_spin(base_model: str | Path | None) -> None:
    """Set GOMP_SPINCOUNT for `base_model` unless the user set it or torch has already loaded."""
    if "torch" in sys.modules:
        return  # libgomp has read it; changing it now would only mislead
    current = os.environ.get(SPIN_VAR)
    if current is not None and current != os.environ.get(MARK_VAR):
        return
    if names_decoder(base_model):
        os.environ.pop(SPIN_VAR, None)
        os.environ.pop(MARK_VAR, None)
    else:
        os.environ[SPIN_VAR] = os.environ[MARK_VAR] = NO_SPIN


def warn_if_unsuited(decoder: bool) -> None:
    """Log a warning when a decoder is served with the no-spin this module chose for another
    base: the process decided before it knew its base (`python -m app.cli`, a Ray replica)."""
    if decoder and os.environ.get(SPIN_VAR) == NO_SPIN == os.environ.get(MARK_VAR):
        log.warning(
            "this decoder base runs with GOMP_SPINCOUNT=0, chosen before the base was known, and "
            "generates up to 1.8x slower; start it with LORASERVE_BASE_MODEL set, or through "
            "`loraserve serve --base-model`, or set GOMP_SPINCOUNT=300000"
        )
