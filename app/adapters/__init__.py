"""Adapters: the PEFT format, versions in the shared state, the registry that resolves and loads them."""

from app.adapters.records import AdapterProblem, AdapterRecord, BaseInfo
from app.adapters.registry import AdapterRegistry

__all__ = ["AdapterProblem", "AdapterRecord", "AdapterRegistry", "BaseInfo"]
