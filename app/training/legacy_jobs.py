"""Import the job database an older single-process service kept (DATA_DIR/jobs.db).

Jobs keep their ids, states, progress and events (in order; events get new ids). A job the old
process left running or cancelling ended when that process did: it is imported as failed
(`interrupted`) or cancelled, as that process's own restart would have marked it. The file is
renamed to `jobs.db.imported` afterwards, so it is read once.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from app.state.tables import DEFAULT_PROJECT, job_events, jobs
from app.training.jobs import INTERRUPTED, JobStore

log = logging.getLogger(__name__)


def import_jobs_db(store: JobStore, path: Path, project: str = DEFAULT_PROJECT) -> int:
    """Import `path` if it is there; returns how many jobs were imported."""
    if not path.is_file():
        return 0
    old = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    old.row_factory = sqlite3.Row
    try:
        rows = old.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        events = old.execute("SELECT * FROM events ORDER BY seq").fetchall()
    finally:
        old.close()
    imported = 0
    with store.db.write() as conn:
        known = set(conn.execute(sa.select(jobs.c.id)).scalars())
        for row in rows:
            if row["id"] in known:
                continue
            status, error = row["status"], row["error"]
            if status == "running":
                status, error = "failed", json.dumps(INTERRUPTED)
            elif status == "cancelling":
                status = "cancelled"
            conn.execute(
                jobs.insert().values(
                    id=row["id"], project_id=project, status=status,
                    adapter_name=row["adapter_name"], training_dataset=row["training_dataset"],
                    validation_dataset=row["validation_dataset"],
                    hyperparameters=row["hyperparameters"], progress=row["progress"], error=error,
                    created_at=row["created_at"], started_at=row["started_at"],
                    finished_at=row["finished_at"],
                )
            )  # fmt: skip
            imported += 1
        ids = {r["id"] for r in rows} - known
        for event in events:
            if event["job_id"] in ids:
                conn.execute(
                    job_events.insert().values(
                        job_id=event["job_id"], created_at=event["created_at"],
                        level=event["level"], type=event["type"], message=event["message"],
                        data=event["data"],
                    )
                )  # fmt: skip
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            os.replace(f"{path}{suffix}", f"{path}.imported{suffix}")
    log.info("imported %d jobs from %s", imported, path)
    return imported
