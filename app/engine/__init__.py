"""The serving engine: mixed-adapter batches, merged copies, the mode policy."""

from app.engine.batcher import Batcher, DirectRunner, Result
from app.engine.merged import MergedCache
from app.engine.predictor import Mode, Predictor, UsedMode

__all__ = ["Batcher", "DirectRunner", "MergedCache", "Mode", "Predictor", "Result", "UsedMode"]
