"""Fine-tuning jobs in the shared database, with the leases workers hold on them.

A job's life: `queued` -> `running` (a worker claimed it under a lease) -> `succeeded`, `failed`
or `cancelled`; a cancel of a running job goes through `cancelling`, which the worker sees when it
renews its lease. A running job whose lease lapses (its worker died) is failed as `interrupted`
(or `cancelled`, if it was being cancelled) by whichever worker notices first. The records and
events themselves are in job_records.py.
"""

from __future__ import annotations

import sqlalchemy as sa

from app.state.tables import jobs
from app.training.job_records import (
    ACTIVE,
    HELD,
    INTERRUPTED,
    Event,
    InvalidCursor,
    Job,
    JobKind,
    JobNotFound,
    JobRecords,
    JobStatus,
    finishing,
    job_of,
    now_ms,
)

__all__ = [
    "ACTIVE",
    "HELD",
    "INTERRUPTED",
    "Event",
    "InvalidCursor",
    "Job",
    "JobKind",
    "JobNotFound",
    "JobStatus",
    "JobStore",
]


class JobStore(JobRecords):
    """The jobs' records, and the leases under which workers run them."""

    def claim(self, worker_id: str, lease_ms: int) -> Job | None:
        """Take the oldest queued job under a lease; None when there is none.

        On PostgreSQL `FOR UPDATE SKIP LOCKED` lets workers claim at once without taking the
        same job or waiting on each other; SQLite has one writer at a time anyway.
        """
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.status == "queued")
                .order_by(jobs.c.seq)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            conn.execute(
                jobs.update()
                .where(jobs.c.id == row.id)
                .values(
                    **finishing("running", None),
                    worker_id=worker_id,
                    lease_expires_ms=now_ms() + lease_ms,
                )
            )
            self.record_event(conn, row.id, "message", f"training started on worker {worker_id}")
            return job_of(conn.execute(sa.select(jobs).where(jobs.c.id == row.id)).one())

    def renew(self, job_id: str, worker_id: str, lease_ms: int) -> JobStatus | None:
        """Extend the lease; the job's status now, or None if this worker no longer holds it."""
        with self.db.write() as conn:
            held = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id, jobs.c.status.in_(HELD))
                .values(lease_expires_ms=now_ms() + lease_ms)
            ).rowcount
            if not held:
                return None
            return conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar_one()

    def reap(self) -> list[str]:
        """End the jobs whose lease lapsed: their worker is gone. Returns their ids."""
        ended = []
        with self.db.write() as conn:
            rows = conn.execute(
                sa.select(jobs.c.id, jobs.c.status)
                .where(jobs.c.status.in_(HELD), jobs.c.lease_expires_ms < now_ms())
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                if row.status == "cancelling":
                    self.move(conn, row.id, "cancelled")
                    self.record_event(conn, row.id, "message", "job cancelled")
                else:
                    self.move(conn, row.id, "failed", error=INTERRUPTED)
                    self.record_event(
                        conn, row.id, "message", "job failed: interrupted", level="error"
                    )
                ended.append(row.id)
        return ended
