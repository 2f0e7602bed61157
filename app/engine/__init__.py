"""The serving engine: mixed-adapter batches, merged copies, the mode policy."""

from app.engine.batcher import Batcher
from app.engine.compute import ComputeThread, on_passing_thread
from app.engine.direct import DirectRunner
from app.engine.interface import Engine, OnBatch, Result
from app.engine.merged import MergedCache
from app.engine.predictor import Mode, Predictor, UsedMode

__all__ = [
    "Batcher",
    "ComputeThread",
    "DirectRunner",
    "Engine",
    "MergedCache",
    "Mode",
    "OnBatch",
    "Predictor",
    "Result",
    "UsedMode",
    "on_passing_thread",
]
