"""Fine-tuning jobs and their events, in SQLite under DATA_DIR, so they outlive the process."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.errors import InvalidInput, NotFound

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]
ACTIVE: tuple[JobStatus, ...] = ("queued", "running", "cancelling")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    adapter_name TEXT NOT NULL,
    training_dataset TEXT NOT NULL,
    validation_dataset TEXT,
    hyperparameters TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    progress TEXT NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""


class JobNotFound(NotFound):
    code = "job_not_found"


class InvalidCursor(InvalidInput):
    """An `after` that names no item of the list it pages: malformed, out of range or unknown."""

    code = "invalid_cursor"


@dataclass
class Job:
    id: str
    status: JobStatus
    adapter_name: str
    training_dataset: str
    validation_dataset: str | None
    hyperparameters: dict[str, Any]
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class Event:
    id: str
    created_at: int
    level: str
    type: Literal["message", "metrics"]
    message: str
    data: dict[str, Any] | None


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        status=row["status"],
        adapter_name=row["adapter_name"],
        training_dataset=row["training_dataset"],
        validation_dataset=row["validation_dataset"],
        hyperparameters=json.loads(row["hyperparameters"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=json.loads(row["progress"]),
        error=json.loads(row["error"]) if row["error"] else None,
    )


_MAX_SEQ = 2**63 - 1  # SQLite's largest integer


def _event_seq(event_id: str) -> int:
    """`event-N` -> N; anything else, or an N SQLite cannot hold, is an invalid cursor."""
    prefix, _, number = event_id.partition("-")
    # isascii: str.isdigit() is also true of digits int() refuses ("²") or reads ("٣").
    digits = prefix == "event" and number.isascii() and number.isdigit() and len(number) <= 19
    if digits and int(number) <= _MAX_SEQ:
        return int(number)
    raise InvalidCursor(f"{_shorten(event_id)} is not an event id of this job", "after")


def _shorten(value: str, limit: int = 64) -> str:
    """A client's value, quoted and cut short, for an error message."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


class JobStore:
    """One SQLite file; one connection guarded by a lock (writes are tiny and rare)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def create(
        self,
        adapter_name: str,
        training_dataset: str,
        validation_dataset: str | None,
        hyperparameters: dict[str, Any],
        progress: dict[str, Any],
    ) -> Job:
        job = Job(
            id="ftjob-" + uuid.uuid4().hex[:24],
            status="queued",
            adapter_name=adapter_name,
            training_dataset=training_dataset,
            validation_dataset=validation_dataset,
            hyperparameters=hyperparameters,
            created_at=int(time.time()),
            progress=progress,
        )
        self._write(
            "INSERT INTO jobs (id, status, adapter_name, training_dataset, validation_dataset,"
            " hyperparameters, created_at, progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.status, adapter_name, training_dataset, validation_dataset,
             json.dumps(hyperparameters), job.created_at, json.dumps(progress)),
        )  # fmt: skip
        self.add_event(job.id, "message", f"job created for adapter {adapter_name!r}")
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"job {_shorten(job_id)} not found", "job_id")
        return _job(row)

    def page(self, after: str | None, limit: int) -> tuple[list[Job], bool]:
        """Newest first; `after` is the last job id of the previous page."""
        with self._lock:
            if after is None:
                rows = self._db.execute(
                    "SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit + 1,)
                ).fetchall()
            else:
                cursor = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                if cursor is None:
                    raise InvalidCursor(f"{_shorten(after)} is not a job id", "after")
                rows = self._db.execute(
                    "SELECT * FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                    (cursor["seq"], limit + 1),
                ).fetchall()
        return [_job(r) for r in rows[:limit]], len(rows) > limit

    def with_status(self, *statuses: JobStatus) -> list[Job]:
        """Jobs in these states, oldest first."""
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses
            ).fetchall()
        return [_job(r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    def set_status(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: dict[str, str] | None = None,
        only_from: tuple[JobStatus, ...] | None = None,
    ) -> bool:
        """Move a job to `status` (only from `only_from` states when given); True if it moved."""
        now = int(time.time())
        sets = ["status = ?"]
        args: list[Any] = [status]
        if status == "running":
            sets.append("started_at = ?")
            args.append(now)
        if status in ("succeeded", "failed", "cancelled"):
            sets.append("finished_at = ?")
            args.append(now)
        if error is not None:
            sets.append("error = ?")
            args.append(json.dumps(error))
        sql = f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?"
        args.append(job_id)
        if only_from:
            sql += f" AND status IN ({','.join('?' * len(only_from))})"
            args += list(only_from)
        with self._lock:
            return self._db.execute(sql, tuple(args)).rowcount == 1

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self._write("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))

    def add_event(
        self,
        job_id: str,
        kind: Literal["message", "metrics"],
        message: str,
        data: dict[str, Any] | None = None,
        level: str = "info",
    ) -> None:
        self._write(
            "INSERT INTO events (job_id, created_at, level, type, message, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, int(time.time()), level, kind, message, json.dumps(data) if data else None),
        )

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[Event], bool]:
        """Oldest first, after the event id `after`: a client follows a job by passing the last id."""
        self.get(job_id)
        seq = 0
        if after is not None:
            seq = _event_seq(after)
            with self._lock:
                known = self._db.execute(
                    "SELECT 1 FROM events WHERE seq = ? AND job_id = ?", (seq, job_id)
                ).fetchone()
            if known is None:
                raise InvalidCursor(f"{_shorten(after)} is not an event id of this job", "after")
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, seq, limit + 1),
            ).fetchall()
        events = [
            Event(
                id=f"event-{r['seq']}",
                created_at=r["created_at"],
                level=r["level"],
                type=r["type"],
                message=r["message"],
                data=json.loads(r["data"]) if r["data"] else None,
            )
            for r in rows[:limit]
        ]
        return events, len(rows) > limit
