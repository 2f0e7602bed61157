"""`loraserve worker` and `loraserve migrate`: processes of their own on the shared state."""

from __future__ import annotations

import json
import logging
import signal
from types import FrameType

from app.logs import configure_logging
from app.services import build_worker, load_family_for, open_shared
from app.settings import Settings

log = logging.getLogger("app.worker")


def run_worker(settings: Settings) -> None:
    """Claim and train jobs until SIGTERM or SIGINT; a job cut short ends `interrupted`."""
    configure_logging()
    worker, state = build_worker(settings)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current step", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
    finally:
        state.db.close()


def migrate(settings: Settings) -> dict[str, object]:
    """Bring the database to the newest schema and import an older layout; what was imported."""
    configure_logging()
    state = open_shared(settings, load_family_for(settings))
    state.db.close()
    return state.imported


def print_migration(settings: Settings) -> None:
    print(json.dumps(migrate(settings), indent=2))
