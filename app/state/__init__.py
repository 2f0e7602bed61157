"""Shared state: the database (SQLAlchemy, Alembic migrations), the object store (obstore),
projects and their keys."""

from app.state.db import Database
from app.state.objects import ObjectExists, ObjectStore

__all__ = ["Database", "ObjectExists", "ObjectStore"]
