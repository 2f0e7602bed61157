"""Training workers: each claims queued jobs from the database, one at a time, oldest first.

A worker holds a job under a lease it renews every third of `lease_ms`; renewing is also how it
hears of a cancel. The adapter a job makes is registered in the same transaction that marks the
job `succeeded`, and only while this worker still holds it, so it is registered exactly once.
`uvicorn app.main:app` runs one worker in its own process; `loraserve worker` runs one alone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict
from functools import partial
from typing import Any

from sqlalchemy import Connection

from app.adapters import AdapterRegistry
from app.adapters.composition import Planned, write
from app.errors import AdapterExists, Conflict, ServiceError, TooManyAdapters
from app.training.datasets import DatasetStore
from app.training.family import Trainable
from app.training.jobs import HELD, INTERRUPTED, Job, JobStore
from app.training.trainer import Cancelled, Diverged, StepReport, TrainConfig

log = logging.getLogger(__name__)
_PROGRESS_EVERY_S = 0.5  # how often step progress is written to the database


class LeaseLost(Conflict):
    """The job is no longer this worker's (its lease lapsed, or it was cancelled)."""

    code = "lease_lost"


def new_worker_id() -> str:
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class TrainingWorker:
    """Trains on the shared frozen base (read-only, no copy) and registers each adapter it makes."""

    def __init__(
        self,
        family: Trainable,
        registry: AdapterRegistry,
        datasets: DatasetStore,
        jobs: JobStore,
        lease_ms: int = 15_000,
        poll_s: float = 1.0,
    ) -> None:
        self.family, self.registry, self.datasets, self.jobs = family, registry, datasets, jobs
        self.worker_id = new_worker_id()
        self.lease_ms, self.poll_s = lease_ms, poll_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel: dict[str, threading.Event] = {}
        self._thread = threading.Thread(target=self.run, name="training-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current step; a job cut short is failed as `interrupted`."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def notify(self) -> None:
        """A job was queued (by this process: others' are found by polling)."""
        self._wake.set()

    def request_cancel(self, job_id: str) -> None:
        """Stop a job this process runs at once, without waiting for the next renewal."""
        event = self._cancel.get(job_id)
        if event is not None:
            event.set()

    def run(self) -> None:
        """Claim and run jobs until stop(); ends jobs whose worker died on the way."""
        log.info("training worker %s started", self.worker_id)
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                for job_id in self.jobs.reap():
                    log.warning("job %s: its worker's lease lapsed", job_id)
                job = self.jobs.claim(self.worker_id, self.lease_ms)
            except Exception:  # the database away for a moment must not end the worker
                log.exception("training worker could not reach the database")
                job = None
            if job is None:
                self._wake.wait(timeout=self.poll_s)
                continue
            # Each job on a thread of its own that ends with it: the OpenMP team torch starts for
            # a thread lives as long as the thread, and an idle extra team slows the compute
            # thread's small ops (app/engine/compute.py).
            runner = threading.Thread(target=self._run_guarded, args=(job,), name="training-job")
            runner.start()
            runner.join()

    def _run_guarded(self, job: Job) -> None:
        try:
            self._run(job)
        except Exception:  # a bug must fail the job, never kill the worker
            log.exception("training job %s crashed", job.id)
            self._finish(job, "failed", {"code": "internal_error", "message": "internal error"})

    def _run(self, job: Job) -> None:
        stop = self._cancel.setdefault(job.id, threading.Event())
        renewing = threading.Thread(
            target=self._renew, args=(job, stop), name="training-lease", daemon=True
        )
        renewing.start()
        try:
            if job.kind == "composition":
                self._compose(job, stop)
            else:
                self._train(job, stop)
        finally:
            self._cancel.pop(job.id, None)
            stop.set()  # ends the renewing thread too
            renewing.join()

    def _renew(self, job: Job, stop: threading.Event) -> None:
        """Renew the lease until the job ends; a cancel, or a lost lease, stops training."""
        while not stop.wait(self.lease_ms / 3000):
            try:
                status = self.jobs.renew(job.id, self.worker_id, self.lease_ms)
            except Exception:
                log.exception("job %s: could not renew its lease", job.id)
                continue
            if status != "running":
                log.info("job %s: %s, stopping", job.id, status or "lease lost")
                stop.set()

    def _train(self, job: Job, stop: threading.Event) -> None:
        config = TrainConfig.model_validate(job.hyperparameters)
        try:
            train = self.family.trainer(self.datasets, job, config)
        except ServiceError as exc:
            self._finish(job, "failed", {"code": exc.code, "message": exc.message})
            return
        progress = dict(job.progress)
        last_write = 0.0

        def on_step(report: StepReport) -> None:
            nonlocal last_write
            progress.update(
                epoch=report.epoch, step=report.step, total_steps=report.total_steps,
                train_loss=report.train_loss,
            )  # fmt: skip
            if report.epoch_end:
                progress["validation_loss"] = report.validation_loss
                progress["validation_recall_at_1"] = report.validation_recall_at_1
                progress["validation_exact_match"] = report.validation_exact_match
                metrics = {k: v for k, v in asdict(report).items() if k != "epoch_end"}
                self.jobs.add_event(job.id, "metrics", f"epoch {report.epoch} done", metrics)
            now = time.monotonic()
            if report.epoch_end or now - last_write > _PROGRESS_EVERY_S:
                self.jobs.set_progress(job.id, progress)
                last_write = now

        def should_stop() -> bool:
            return stop.is_set() or self._stopping.is_set()

        try:
            adapter = train(on_step, should_stop)
        except Cancelled:
            self.jobs.set_progress(job.id, progress)
            if self._stopping.is_set() and self.jobs.get(job.id, None).status == "running":
                self._finish(job, "failed", INTERRUPTED)
            else:
                self._finish(job, "cancelled", None)
            return
        except Diverged as exc:
            self._finish(job, "failed", {"code": "diverged", "message": str(exc)})
            return
        self.jobs.set_progress(job.id, progress)
        try:
            self.registry.add(
                job.adapter_name,
                adapter,
                source="training",
                metadata={"job_id": job.id},
                project=job.project,
                within=partial(self._succeed, job),
            )
        except LeaseLost:
            # Cancelled at the last moment, or this worker's lease lapsed: nothing registered.
            self._finish(job, "cancelled", None)
            return
        except (AdapterExists, TooManyAdapters) as exc:
            self._finish(job, "failed", {"code": exc.code, "message": exc.message})
            return
        log.info("training job %s succeeded", job.id)

    def _compose(self, job: Job, stop: threading.Event) -> None:
        """A composition too large to make during its request (app.adapters.composition)."""
        planned = Planned.from_json(job.hyperparameters)
        self.jobs.add_event(job.id, "message", f"composing {len(planned.sources)} adapters "
                            f"({planned.method})")  # fmt: skip
        try:
            write(self.registry, planned, within=partial(self._succeed, job, stop=stop))
        except LeaseLost:
            self._finish(job, "cancelled", None)
            return
        except ServiceError as exc:  # a source deleted meanwhile, the name taken, the quota
            self._finish(job, "failed", {"code": exc.code, "message": exc.message})
            return
        log.info("composition job %s succeeded", job.id)

    def _succeed(self, job: Job, conn: Connection, stop: threading.Event | None = None) -> None:
        """Inside the registering transaction: the job is still ours and running (and was not
        asked to stop), or nothing."""
        if stop is not None and (stop.is_set() or self._stopping.is_set()):
            raise LeaseLost(f"job {job.id} was stopped")
        if not self.jobs.move(conn, job.id, "succeeded", only_from=("running",),
                              worker_id=self.worker_id):  # fmt: skip
            raise LeaseLost(f"job {job.id} is no longer running on this worker")
        self.jobs.record_event(conn, job.id, "message", f"adapter {job.adapter_name!r} registered")
        self.jobs.record_event(conn, job.id, "message", "job succeeded")

    def _finish(self, job: Job, status: Any, error: dict[str, str] | None) -> None:
        """End a job this worker holds (a job it no longer holds is left as it is)."""
        message = f"job {status}" + (f": {error['message']}" if error else "")
        with self.jobs.db.write() as conn:
            if self.jobs.move(conn, job.id, status, error=error, only_from=HELD,
                              worker_id=self.worker_id):  # fmt: skip
                level = "error" if error else "info"
                self.jobs.record_event(conn, job.id, "message", message, level=level)
        log.info("training job %s %s", job.id, status)
