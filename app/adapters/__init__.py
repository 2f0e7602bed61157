"""The adapter store (PEFT layout on disk) and the registry that indexes and loads it."""

from app.adapters.records import AdapterProblem, AdapterRecord, BaseInfo
from app.adapters.registry import AdapterRegistry
from app.adapters.store import AdapterStore

__all__ = ["AdapterProblem", "AdapterRecord", "AdapterRegistry", "AdapterStore", "BaseInfo"]
