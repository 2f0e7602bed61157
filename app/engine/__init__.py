"""The serving engine: mixed-adapter batches, merged copies, the mode policy."""

from app.engine.merged import MergedCache
from app.engine.predictor import Mode, Predictor, UsedMode

__all__ = ["MergedCache", "Mode", "Predictor", "UsedMode"]
