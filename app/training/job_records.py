"""Fine-tuning jobs and their events in the shared database: the records every process reads
and changes. The leases that workers hold on running jobs are in jobs.py."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import Connection

from app.errors import InvalidInput, NotFound
from app.state import Database
from app.state.tables import DEFAULT_PROJECT, job_events, jobs

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]
JobKind = Literal["fine_tuning", "composition"]
ACTIVE: tuple[JobStatus, ...] = ("queued", "running", "cancelling")
HELD: tuple[JobStatus, ...] = ("running", "cancelling")  # a worker holds a lease on these
INTERRUPTED = {"code": "interrupted", "message": "the worker stopped during training"}


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
    project: str = DEFAULT_PROJECT
    worker_id: str | None = None
    kind: JobKind = "fine_tuning"


@dataclass(frozen=True)
class Event:
    id: str
    created_at: int
    level: str
    type: Literal["message", "metrics"]
    message: str
    data: dict[str, Any] | None


def job_of(row: sa.Row) -> Job:
    return Job(
        id=row.id,
        status=row.status,
        adapter_name=row.adapter_name,
        training_dataset=row.training_dataset,
        validation_dataset=row.validation_dataset,
        hyperparameters=json.loads(row.hyperparameters),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        progress=json.loads(row.progress),
        error=json.loads(row.error) if row.error else None,
        project=row.project_id,
        worker_id=row.worker_id,
        kind=row.kind,
    )


_MAX_SEQ = 2**63 - 1  # the largest row number either database holds


def _event_seq(event_id: str) -> int:
    """`event-N` -> N; anything else, or an N no database can hold, is an invalid cursor."""
    prefix, _, number = event_id.partition("-")
    # isascii: str.isdigit() is also true of digits int() refuses ("²") or reads ("٣").
    digits = prefix == "event" and number.isascii() and number.isdigit() and len(number) <= 19
    if digits and int(number) <= _MAX_SEQ:
        return int(number)
    raise InvalidCursor(f"{_shorten(event_id)} is not an event id of this job", "after")


def _shorten(value: str, limit: int = 64) -> str:
    """A client's value, quoted and cut short, for an error message."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def now_ms() -> int:
    return int(time.time() * 1000)


def finishing(status: JobStatus, error: dict[str, str] | None) -> dict[str, Any]:
    """The columns a move to `status` sets."""
    values: dict[str, Any] = {"status": status}
    if status == "running":
        values["started_at"] = int(time.time())
    if status in ("succeeded", "failed", "cancelled"):
        values.update(finished_at=int(time.time()), worker_id=None, lease_expires_ms=None)
    if error is not None:
        values["error"] = json.dumps(error)
    return values


class JobRecords:
    """Jobs and events in the database that every API process and worker shares."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        adapter_name: str,
        training_dataset: str,
        validation_dataset: str | None,
        hyperparameters: dict[str, Any],
        progress: dict[str, Any],
        project: str = DEFAULT_PROJECT,
        within: Connection | None = None,
        kind: JobKind = "fine_tuning",
    ) -> Job:
        prefix = "ftjob-" if kind == "fine_tuning" else "composejob-"
        job = Job(
            id=prefix + uuid.uuid4().hex[:24],
            status="queued",
            adapter_name=adapter_name,
            training_dataset=training_dataset,
            validation_dataset=validation_dataset,
            hyperparameters=hyperparameters,
            created_at=int(time.time()),
            progress=progress,
            project=project,
            kind=kind,
        )
        with self.db.write(within) as conn:
            conn.execute(
                jobs.insert().values(
                    id=job.id,
                    project_id=project,
                    status=job.status,
                    kind=kind,
                    adapter_name=adapter_name,
                    training_dataset=training_dataset,
                    validation_dataset=validation_dataset,
                    hyperparameters=json.dumps(hyperparameters),
                    progress=json.dumps(progress),
                    created_at=job.created_at,
                )
            )
            self.record_event(conn, job.id, "message", f"job created for adapter {adapter_name!r}")
        return job

    def get(
        self, job_id: str, project: str | None = DEFAULT_PROJECT, kind: JobKind | None = None
    ) -> Job:
        """The job; 404 for an unknown one, another project's (None: any project's) or another
        kind's (None: any kind)."""
        query = sa.select(jobs).where(jobs.c.id == job_id)
        if project is not None:
            query = query.where(jobs.c.project_id == project)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise JobNotFound(f"job {_shorten(job_id)} not found", "job_id")
        return job_of(row)

    def page(
        self,
        after: str | None,
        limit: int,
        project: str = DEFAULT_PROJECT,
        kind: JobKind = "fine_tuning",
    ) -> tuple[list[Job], bool]:
        """Newest first; `after` is the last job id of the previous page."""
        mine = (jobs.c.project_id == project, jobs.c.kind == kind)
        query = sa.select(jobs).where(*mine)
        with self.db.read() as conn:
            if after is not None:
                seq = conn.execute(sa.select(jobs.c.seq).where(jobs.c.id == after, *mine)).scalar()
                if seq is None:
                    raise InvalidCursor(f"{_shorten(after)} is not a job id", "after")
                query = query.where(jobs.c.seq < seq)
            rows = conn.execute(query.order_by(jobs.c.seq.desc()).limit(limit + 1)).all()
        return [job_of(r) for r in rows[:limit]], len(rows) > limit

    def with_status(
        self, *statuses: JobStatus, project: str | None = None, within: Connection | None = None
    ) -> list[Job]:
        """Jobs in these states, oldest first (in one project, or in all for None)."""
        query = sa.select(jobs).where(jobs.c.status.in_(statuses))
        if project is not None:
            query = query.where(jobs.c.project_id == project)
        with self.db.read(within) as conn:
            rows = conn.execute(query.order_by(jobs.c.seq)).all()
        return [job_of(r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
            ).all()
        return {status: count for status, count in rows}

    def set_status(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: dict[str, str] | None = None,
        only_from: tuple[JobStatus, ...] | None = None,
        event: str | None = None,
    ) -> bool:
        """Move a job to `status` (only from `only_from` states); True if it moved. `event`, if
        given, is recorded in the same transaction."""
        with self.db.write() as conn:
            moved = self.move(conn, job_id, status, error=error, only_from=only_from)
            if moved and event:
                self.record_event(
                    conn, job_id, "message", event, level="error" if error else "info"
                )
        return moved

    def move(
        self,
        conn: Connection,
        job_id: str,
        status: JobStatus,
        *,
        error: dict[str, str] | None = None,
        only_from: tuple[JobStatus, ...] | None = None,
        worker_id: str | None = None,
    ) -> bool:
        """set_status inside the caller's transaction; with `worker_id`, only while it holds it."""
        query = jobs.update().where(jobs.c.id == job_id)
        if only_from:
            query = query.where(jobs.c.status.in_(only_from))
        if worker_id is not None:
            query = query.where(jobs.c.worker_id == worker_id)
        return bool(conn.execute(query.values(**finishing(status, error))).rowcount == 1)

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self.db.write() as conn:
            conn.execute(
                jobs.update().where(jobs.c.id == job_id).values(progress=json.dumps(progress))
            )

    def add_event(
        self,
        job_id: str,
        kind: Literal["message", "metrics"],
        message: str,
        data: dict[str, Any] | None = None,
        level: str = "info",
    ) -> None:
        with self.db.write() as conn:
            self.record_event(conn, job_id, kind, message, data, level)

    def events(
        self,
        job_id: str,
        after: str | None,
        limit: int,
        project: str = DEFAULT_PROJECT,
        kind: JobKind | None = None,
    ) -> tuple[list[Event], bool]:
        """Oldest first, after the event id `after`: a client follows a job by passing the last id."""
        self.get(job_id, project, kind)
        seq = 0
        with self.db.read() as conn:
            if after is not None:
                seq = _event_seq(after)
                known = conn.execute(
                    sa.select(job_events.c.seq).where(
                        job_events.c.seq == seq, job_events.c.job_id == job_id
                    )
                ).first()
                if known is None:
                    raise InvalidCursor(
                        f"{_shorten(after)} is not an event id of this job", "after"
                    )
            rows = conn.execute(
                sa.select(job_events)
                .where(job_events.c.job_id == job_id, job_events.c.seq > seq)
                .order_by(job_events.c.seq)
                .limit(limit + 1)
            ).all()
        events = [
            Event(
                id=f"event-{r.seq}",
                created_at=r.created_at,
                level=r.level,
                type=r.type,
                message=r.message,
                data=json.loads(r.data) if r.data else None,
            )
            for r in rows[:limit]
        ]
        return events, len(rows) > limit

    @staticmethod
    def record_event(
        conn: Connection,
        job_id: str,
        kind: str,
        message: str,
        data: dict[str, Any] | None = None,
        level: str = "info",
    ) -> None:
        """Add an event inside the caller's transaction (with the change it reports)."""
        conn.execute(
            job_events.insert().values(
                job_id=job_id,
                created_at=int(time.time()),
                level=level,
                type=kind,
                message=message,
                data=json.dumps(data) if data else None,
            )
        )
