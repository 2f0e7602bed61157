"""Adapters: the PEFT format, versions in the shared state, the registry that resolves and loads them."""

from app.adapters.records import AdapterProblem, AdapterRecord, BaseInfo, base_info
from app.adapters.registry import AdapterRegistry

__all__ = ["AdapterProblem", "AdapterRecord", "AdapterRegistry", "BaseInfo", "base_info"]
