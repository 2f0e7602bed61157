"""Projects (tenants) and their keys: created by a super-admin, looked up on every request.

A key is shown once, when it is made, and stored only as its sha256 (keys are 256 random bits,
so a fast hash is enough). Lookups are cached for at most `ttl_ms`, so a revoked key stops
working on every replica within that time, as a replaced adapter name does.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app.errors import Conflict, NotFound
from app.state import Database
from app.state.tables import api_keys, projects

KeyRole = Literal["admin", "api"]
_MAX_CACHED = 100_000


class ProjectNotFound(NotFound):
    code = "project_not_found"


class KeyNotFound(NotFound):
    code = "key_not_found"


class ProjectExists(Conflict):
    code = "project_exists"


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    created_at: int
    max_adapters: int | None
    max_queued_jobs: int | None
    max_stored_bytes: int | None


@dataclass(frozen=True)
class ApiKey:
    id: str
    project_id: str
    role: KeyRole
    label: str | None
    created_at: int
    revoked_at: int | None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _project(row: sa.Row) -> Project:
    return Project(
        row.id, row.name, row.created_at, row.max_adapters, row.max_queued_jobs,
        row.max_stored_bytes,
    )  # fmt: skip


def _key(row: sa.Row) -> ApiKey:
    return ApiKey(row.id, row.project_id, row.role, row.label, row.created_at, row.revoked_at)


class Projects:
    """The projects table and the keys of each project."""

    def __init__(self, db: Database, ttl_ms: float) -> None:
        self.db = db
        self.ttl_s = ttl_ms / 1000
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, tuple[str, KeyRole] | None]] = {}

    def create(
        self,
        name: str,
        max_adapters: int | None = None,
        max_queued_jobs: int | None = None,
        max_stored_bytes: int | None = None,
    ) -> Project:
        project = Project(
            "proj-" + uuid.uuid4().hex[:16], name, int(time.time()),
            max_adapters, max_queued_jobs, max_stored_bytes,
        )  # fmt: skip
        try:
            with self.db.write() as conn:
                conn.execute(projects.insert().values(**project.__dict__))
        except IntegrityError as exc:
            raise ProjectExists(f"a project named {name!r} exists already", "name") from exc
        return project

    def all(self) -> list[Project]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(projects).order_by(projects.c.created_at)).all()
        return [_project(r) for r in rows]

    def get(self, project_id: str) -> Project:
        with self.db.read() as conn:
            row = conn.execute(sa.select(projects).where(projects.c.id == project_id)).first()
        if row is None:
            raise ProjectNotFound(f"project {project_id!r} not found", "project_id")
        return _project(row)

    def create_key(self, project_id: str, role: KeyRole, label: str | None) -> tuple[ApiKey, str]:
        """A new key of the project: its record, and the key itself (shown this once)."""
        self.get(project_id)
        secret = "lsk-" + secrets.token_urlsafe(32)
        key = ApiKey(
            "key-" + uuid.uuid4().hex[:16], project_id, role, label, int(time.time()), None
        )
        with self.db.write() as conn:
            conn.execute(api_keys.insert().values(**key.__dict__, key_hash=key_hash(secret)))
        return key, secret

    def keys(self, project_id: str) -> list[ApiKey]:
        self.get(project_id)
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(api_keys)
                .where(api_keys.c.project_id == project_id)
                .order_by(api_keys.c.created_at, api_keys.c.id)
            ).all()
        return [_key(r) for r in rows]

    def revoke(self, project_id: str, key_id: str) -> None:
        with self.db.write() as conn:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.project_id == project_id)
                .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, int(time.time())))
            ).rowcount
        if not done:
            raise KeyNotFound(f"key {key_id!r} not found in project {project_id!r}", "key_id")
        with self._lock:
            self._cache.clear()  # this replica at once; the others within ttl_ms

    def lookup(self, secret: str) -> tuple[str, KeyRole] | None:
        """(project, role) of a live key; None for an unknown or revoked one. Cached."""
        digest = key_hash(secret)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(api_keys.c.project_id, api_keys.c.role).where(
                    api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                )
            ).first()
        found = None if row is None else (row.project_id, row.role)
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[digest] = (now + self.ttl_s, found)
        return found
