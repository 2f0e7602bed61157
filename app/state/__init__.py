"""Shared state: the database (SQLAlchemy, Alembic migrations) and the object store (obstore)."""

from app.state.db import Database
from app.state.objects import ObjectExists, ObjectStore

__all__ = ["Database", "ObjectExists", "ObjectStore"]
