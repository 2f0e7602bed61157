"""`loraserve worker` and `loraserve migrate`: processes of their own on the shared state."""

from __future__ import annotations

import json
import logging
import signal
from types import FrameType

from app.logs import configure_logging
from app.settings import Settings
from app.state.open import load_base, open_state
from app.training.worker import TrainingWorker

log = logging.getLogger("app.worker")


def run_worker(settings: Settings) -> None:
    """Claim and train jobs until SIGTERM or SIGINT; a job cut short ends `interrupted`."""
    configure_logging()
    base, info = load_base(settings)
    state = open_state(settings, base, info)
    worker = TrainingWorker(base, state.registry, state.datasets, state.jobs, settings.job_lease_ms)

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
    base, info = load_base(settings)
    state = open_state(settings, base, info)
    state.db.close()
    return state.imported


def print_migration(settings: Settings) -> None:
    print(json.dumps(migrate(settings), indent=2))
