"""Training: datasets, the job store, the worker thread and the LoRA training loop."""

from app.training.datasets import DatasetRecord, DatasetStore
from app.training.jobs import Event, Job, JobStore
from app.training.jsonl import JsonlDatasetStore
from app.training.pairs import PairDatasetStore
from app.training.service import TrainingService
from app.training.trainer import TrainConfig, train_lora

__all__ = [
    "DatasetRecord",
    "DatasetStore",
    "Event",
    "Job",
    "JobStore",
    "JsonlDatasetStore",
    "PairDatasetStore",
    "TrainConfig",
    "TrainingService",
    "train_lora",
]
