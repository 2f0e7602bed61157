"""The adapter store (PEFT layout on disk) and the registry that indexes and loads it."""

from app.adapters.registry import AdapterRecord, AdapterRegistry, BaseInfo
from app.adapters.store import AdapterStore

__all__ = ["AdapterRecord", "AdapterRegistry", "AdapterStore", "BaseInfo"]
