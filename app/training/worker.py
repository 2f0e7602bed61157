"""The training worker: one thread that runs queued jobs, one at a time, oldest first."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import Any

from app.adapters import AdapterRegistry
from app.errors import AdapterExists, ServiceError, TooManyAdapters
from app.lora import LoraAdapter
from app.model import BaseModel
from app.training.contrastive import train_text_lora
from app.training.datasets import DatasetStore
from app.training.jobs import Job, JobStore
from app.training.pairs import PairDatasetStore
from app.training.trainer import Cancelled, Diverged, StepReport, TrainConfig, train_lora

log = logging.getLogger(__name__)
_PROGRESS_EVERY_S = 0.5  # how often step progress is written to the database


class TrainingWorker:
    """Trains on the shared frozen base (read-only, no copy) and registers each adapter it makes."""

    def __init__(
        self, base: BaseModel, registry: AdapterRegistry, datasets: DatasetStore, jobs: JobStore
    ) -> None:
        self.base, self.registry, self.datasets, self.jobs = base, registry, datasets, jobs
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel: dict[str, threading.Event] = {}
        # Held from the last cancellation check to the job's final state, so that a cancel either
        # stops the job before its adapter is registered or finds it already finished.
        self.finish_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="training-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current step; a job cut short is failed as `interrupted`."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def notify(self) -> None:
        """A job was queued."""
        self._wake.set()

    def request_cancel(self, job_id: str) -> None:
        event = self._cancel.get(job_id)
        if event is not None:
            event.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            queued = self.jobs.with_status("queued")
            if not queued:
                self._wake.wait(timeout=1.0)
                continue
            job = queued[0]
            if not self.jobs.set_status(job.id, "running", only_from=("queued",)):
                continue  # cancelled in the meantime
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
        hp = job.hyperparameters
        config = TrainConfig(
            rank=hp["rank"],
            alpha=hp["alpha"],
            target_modules=tuple(hp["target_modules"]),
            epochs=hp["epochs"],
            batch_size=hp["batch_size"],
            learning_rate=hp["learning_rate"],
            use_rslora=hp["use_rslora"],
            loss=hp["loss"],
            seed=hp["seed"],
        )
        self.jobs.add_event(job.id, "message", "training started")
        try:
            train = self._trainer(job, config)
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
            if self._stopping.is_set() and not stop.is_set():
                error = {"code": "interrupted", "message": "the service shut down during training"}
                self._finish(job, "failed", error)
            else:
                self._finish(job, "cancelled", None)
            return
        except Diverged as exc:
            self._finish(job, "failed", {"code": "diverged", "message": str(exc)})
            return
        self.jobs.set_progress(job.id, progress)
        with self.finish_lock:
            if stop.is_set():
                self._finish(job, "cancelled", None)
                return
            try:
                self.registry.add(
                    job.adapter_name, adapter, source="training", metadata={"job_id": job.id}
                )
            except (AdapterExists, TooManyAdapters) as exc:
                self._finish(job, "failed", {"code": exc.code, "message": exc.message})
                return
            self.jobs.add_event(job.id, "message", f"adapter {job.adapter_name!r} registered")
            self._finish(job, "succeeded", None)

    def _trainer(self, job: Job, config: TrainConfig) -> Callable[..., LoraAdapter]:
        """The job's data, loaded, bound to the training loop of the base's family."""
        model, device = self.base.module, self.base.device
        if isinstance(self.datasets, PairDatasetStore):
            assert self.base.text is not None
            pairs = self.datasets.load_pairs(job.training_dataset)
            held_out = None
            if job.validation_dataset is not None:
                held_out = self.datasets.load_pairs(job.validation_dataset)
            return partial(train_text_lora, model, self.base.text, config, pairs, held_out)
        x, y = (t.to(device) for t in self.datasets.load(job.training_dataset))
        validation = None
        if job.validation_dataset is not None:
            xv, yv = self.datasets.load(job.validation_dataset)
            validation = (xv.to(device), yv.to(device))
        return partial(train_lora, model, config, x, y, validation)

    def _finish(self, job: Job, status: Any, error: dict[str, str] | None) -> None:
        self.jobs.set_status(job.id, status, error=error)
        message = f"job {status}" + (f": {error['message']}" if error else "")
        self.jobs.add_event(job.id, "message", message, level="error" if error else "info")
        self._cancel.pop(job.id, None)
        log.info("training job %s %s", job.id, status)
