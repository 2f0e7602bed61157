"""Training, whatever the family: dataset storage, the job store, the worker and the LoRA loop.

A family brings its own dataset format and objective (app.training.family.Trainable)."""

from app.training.datasets import DatasetRecord, DatasetStore
from app.training.jobs import Event, Job, JobStore
from app.training.jsonl import JsonlDatasetStore
from app.training.service import TrainingService
from app.training.trainer import TrainConfig, train_lora

__all__ = [
    "DatasetRecord",
    "DatasetStore",
    "Event",
    "Job",
    "JobStore",
    "JsonlDatasetStore",
    "TrainConfig",
    "TrainingService",
    "train_lora",
]
