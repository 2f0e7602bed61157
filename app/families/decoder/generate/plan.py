"""A generation step's plan: which adapter each row of the step's forward gets."""

from __future__ import annotations

from app.engine.policy import Mode, runs_merged
from app.engine.predictor import Predictor
from app.lora import LinearFn, StackedBatch, merged_linear, unmerged_linear


class StepPlans:
    """Plans for an engine's steps; a mixed batch is kept while the next step's rows go to the
    same adapters (a decode step usually has the rows of the one before)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.last: StackedBatch | None = None

    def plan(self, keys: list[str | None], modes: set[Mode], sequences: int) -> LinearFn | None:
        """The base alone, one adapter (merged where it pays), or one adapter per row (`keys`)."""
        predictor = self.predictor
        versions = set(keys)
        if versions == {None}:
            return None
        adapters = predictor.adapters(predictor.resolve(versions, "model"), "model")
        if len(versions) == 1:
            (version,) = versions
            assert version is not None
            # The whole batch on one adapter: its merged copy costs nothing per token, and more
            # than one sequence on it pays for making the copy (app.engine.policy).
            merged = predictor.is_merged(version)
            wanted = runs_merged(modes, 1, False, merged, pays=sequences > 1)
            if wanted and predictor.merge(version, "model"):
                return merged_linear(predictor.merged.get_or_merge(version, adapters[version]))
            return unmerged_linear(adapters[version])
        stack = predictor.stack_for(adapters)
        if self.last is None or not self.last.serves(keys, stack):
            self.last = StackedBatch.build(keys, stack, predictor.base.device)
        return self.last.linear()
