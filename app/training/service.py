"""The rules of fine-tuning jobs: what may be queued, and cancel; workers run them."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection

from app.adapters import AdapterRegistry
from app.adapters.catalog import lock_project
from app.adapters.composition import Planned
from app.adapters.peft_format import check_name
from app.errors import (
    AdapterExists,
    Conflict,
    TooManyRequests,
)
from app.state.tables import DEFAULT_PROJECT
from app.training.datasets import DatasetStore
from app.training.family import Trainable
from app.training.hyperparameters import Hyperparameters
from app.training.jobs import ACTIVE, Job, JobKind, JobStore
from app.training.trainer import total_steps
from app.training.worker import TrainingWorker

log = logging.getLogger(__name__)


class JobNotCancellable(Conflict):
    code = "job_not_cancellable"


class DatasetInUse(Conflict):
    code = "dataset_in_use"


class TrainingService:
    """Creates and cancels jobs; workers (this process's own, or others) run them."""

    def __init__(
        self,
        family: Trainable,
        registry: AdapterRegistry,
        datasets: DatasetStore,
        jobs: JobStore,
        max_rank: int,
        max_queued_jobs: int = 100,
        lease_ms: int = 15_000,
    ) -> None:
        self.family, self.registry, self.datasets, self.jobs = family, registry, datasets, jobs
        self.max_rank = max_rank
        self.max_queued_jobs = max_queued_jobs
        self.worker = TrainingWorker(family, registry, datasets, jobs, lease_ms)
        # Within this process, as the project's row lock does across processes: create_job's
        # checks and insert are one step, and delete_dataset's check and delete another;
        # otherwise a job can be queued on a dataset deleted in between (both answering
        # success), or two concurrent jobs queued for one adapter name.
        self._lock = threading.Lock()

    def start(self, embedded_worker: bool = True) -> None:
        """Run this process's own worker (unless others do the training)."""
        if embedded_worker:
            self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def create_job(
        self,
        adapter_name: str,
        training_dataset: str,
        validation_dataset: str | None,
        hyperparameters: Hyperparameters,
        project: str = DEFAULT_PROJECT,
    ) -> Job:
        """Check everything that can be checked now, resolve defaults, queue the job."""
        check_name(adapter_name, "adapter_name")
        config = hyperparameters.resolve(self.family, self.max_rank)
        # One transaction holding the project's lock, from the first check to the insert: no
        # other process can delete the dataset, or queue a job for the name, in between.
        with self._lock, self.jobs.db.write() as conn:
            lock_project(conn, project)
            train = self.datasets.get(training_dataset, "training_dataset", project, conn)
            if validation_dataset is not None:
                self.datasets.get(validation_dataset, "validation_dataset", project, conn)
            try:
                self.registry.check_room(adapter_name, project, overwrite=False, within=conn)
            except AdapterExists as exc:
                raise AdapterExists(
                    f"adapter {adapter_name!r} already exists", "adapter_name"
                ) from exc
            self._check_queue(adapter_name, project, conn, "adapter_name")
            progress = {
                "epoch": 0,
                "epochs": config.epochs,
                "step": 0,
                "total_steps": total_steps(train.rows, config.batch_size, config.epochs),
                "train_loss": None,
                "validation_loss": None,
                "validation_recall_at_1": None,
                "validation_exact_match": None,
            }
            job = self.jobs.create(
                adapter_name,
                training_dataset,
                validation_dataset,
                config.model_dump(mode="json"),
                progress,
                project,
                conn,
            )
        self.worker.notify()
        return job

    def create_composition_job(self, planned: Planned) -> Job:
        """Queue a checked composition (app.adapters.composition.plan) for a worker to make."""
        project, name = planned.project, planned.name
        with self._lock, self.jobs.db.write() as conn:
            lock_project(conn, project)
            self.registry.check_room(name, project, overwrite=planned.overwrite, within=conn)
            self._check_queue(name, project, conn, "name")
            job = self.jobs.create(
                name, "", None, planned.as_json(), {}, project, conn, kind="composition"
            )
        self.worker.notify()
        return job

    def _check_queue(self, adapter_name: str, project: str, conn: Connection, field: str) -> None:
        """429 past the project's queued jobs; 409 while another job makes the same adapter."""
        active = self.jobs.with_status(*ACTIVE, project=project, within=conn)
        limit = self.registry.quota(project, "max_queued_jobs", conn) or self.max_queued_jobs
        if sum(j.status == "queued" for j in active) >= limit:
            raise TooManyRequests(f"{limit} jobs are already queued; retry when some have run")
        if any(j.adapter_name == adapter_name for j in active):
            raise AdapterExists(f"another job is already making adapter {adapter_name!r}", field)

    def cancel(
        self, job_id: str, project: str = DEFAULT_PROJECT, kind: JobKind = "fine_tuning"
    ) -> Job:
        """Queued jobs are cancelled at once; running ones go through `cancelling`, which their
        worker sees when it next renews its lease (at once, if it runs in this process)."""
        job = self.jobs.get(job_id, project, kind)
        if job.status == "queued" and self.jobs.set_status(
            job_id, "cancelled", only_from=("queued",), event="job cancelled before it started"
        ):
            pass
        elif job.status == "running" and self.jobs.set_status(
            job_id, "cancelling", only_from=("running",), event="cancellation requested"
        ):
            self.worker.request_cancel(job_id)
        elif job.status not in ("cancelling", "queued", "running"):
            raise JobNotCancellable(f"job {job_id!r} is already {job.status}", "job_id")
        job = self.jobs.get(job_id, project, kind)
        if job.status not in ("cancelled", "cancelling"):  # it moved on meanwhile
            raise JobNotCancellable(f"job {job_id!r} is already {job.status}", "job_id")
        return job

    def delete_dataset(self, dataset_id: str, project: str = DEFAULT_PROJECT) -> None:
        """Refused while a queued or running job still needs the dataset."""
        with self._lock, self.jobs.db.write() as conn:
            lock_project(conn, project)
            self.datasets.get(dataset_id, project=project, within=conn)
            for job in self.jobs.with_status(*ACTIVE, project=project, within=conn):
                if dataset_id in (job.training_dataset, job.validation_dataset):
                    raise DatasetInUse(f"job {job.id} still uses dataset {dataset_id!r}", "id")
            self.datasets.delete(dataset_id, project, conn)
