"""The registry's SQL: names -> current version, versions, history. Callers own the transaction."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from app.state.tables import adapter_history, adapters, projects, versions


@dataclass(frozen=True)
class VersionRow:
    """A version as the database keeps it; `name` is the name it was looked up under."""

    project: str
    name: str
    id: str
    size_bytes: int
    stored_bytes: int
    weights_sha256: str
    config: str
    metadata: str
    source: str
    created_at: int
    problem: str | None


def _row(name: str, row: sa.Row) -> VersionRow:
    return VersionRow(
        project=row.project_id,
        name=name,
        id=row.id,
        size_bytes=row.size_bytes,
        stored_bytes=row.stored_bytes,
        weights_sha256=row.weights_sha256,
        config=row.config,
        metadata=row.metadata,
        source=row.source,
        created_at=row.created_at,
        problem=row.problem,
    )


_CURRENT = sa.select(versions, adapters.c.name.label("adapter_name")).join(
    adapters,
    sa.and_(adapters.c.project_id == versions.c.project_id, adapters.c.version_id == versions.c.id),
)


def lock_project(conn: Connection, project: str) -> None:
    """Serialize a project's writers (a no-op on SQLite, whose writers are serial already)."""
    conn.execute(sa.select(projects.c.id).where(projects.c.id == project).with_for_update())


def current(conn: Connection, project: str, name: str) -> VersionRow | None:
    row = conn.execute(
        _CURRENT.where(adapters.c.project_id == project, adapters.c.name == name)
    ).first()
    return None if row is None else _row(name, row)


def all_current(conn: Connection, project: str) -> list[VersionRow]:
    rows = conn.execute(
        _CURRENT.where(adapters.c.project_id == project).order_by(adapters.c.name)
    ).all()
    return [_row(r.adapter_name, r) for r in rows]


def history(conn: Connection, project: str, name: str) -> list[tuple[VersionRow, int]]:
    """Every version the name has pointed at, newest first, with when it started to."""
    rows = conn.execute(
        sa.select(versions, adapter_history.c.created_at.label("pointed_at"))
        .join(
            adapter_history,
            sa.and_(
                adapter_history.c.project_id == versions.c.project_id,
                adapter_history.c.version_id == versions.c.id,
            ),
        )
        .where(adapter_history.c.project_id == project, adapter_history.c.name == name)
        .order_by(adapter_history.c.seq.desc())
    ).all()
    return [(_row(name, r), r.pointed_at) for r in rows]


def by_id(conn: Connection, version_id: str) -> VersionRow | None:
    """Any project's row of a version (the content, so the weights, are the same in all)."""
    row = conn.execute(sa.select(versions).where(versions.c.id == version_id).limit(1)).first()
    return None if row is None else _row("", row)


def has_version(conn: Connection, project: str, version_id: str) -> bool:
    query = sa.select(versions.c.id).where(
        versions.c.project_id == project, versions.c.id == version_id
    )
    return conn.execute(query).first() is not None


def add_version(conn: Connection, row: VersionRow) -> None:
    values = asdict(row)
    del values["name"], values["problem"]  # a version has no name of its own, and no problem yet
    values["project_id"] = values.pop("project")
    conn.execute(versions.insert().values(**values))


def point(conn: Connection, project: str, name: str, version_id: str, now: int) -> None:
    """Make `name` serve `version_id` from now on, and add that to its history."""
    changed = conn.execute(
        adapters.update()
        .where(adapters.c.project_id == project, adapters.c.name == name)
        .values(version_id=version_id, updated_at=now)
    ).rowcount
    if not changed:
        conn.execute(
            adapters.insert().values(
                project_id=project, name=name, version_id=version_id, created_at=now, updated_at=now
            )
        )
    conn.execute(
        adapter_history.insert().values(
            project_id=project, name=name, version_id=version_id, created_at=now
        )
    )


def remove(conn: Connection, project: str, name: str) -> list[str]:
    """Drop the name and its history; returns the versions nothing in the project uses now."""
    used = conn.execute(
        sa.select(adapter_history.c.version_id)
        .where(adapter_history.c.project_id == project, adapter_history.c.name == name)
        .distinct()
    ).scalars()
    candidates = set(used)
    conn.execute(adapters.delete().where(adapters.c.project_id == project, adapters.c.name == name))
    conn.execute(
        adapter_history.delete().where(
            adapter_history.c.project_id == project, adapter_history.c.name == name
        )
    )
    if not candidates:
        return []
    still = conn.execute(
        sa.select(adapter_history.c.version_id)
        .where(
            adapter_history.c.project_id == project,
            adapter_history.c.version_id.in_(candidates),
        )
        .distinct()
    ).scalars()
    orphans = sorted(candidates - set(still))
    if orphans:
        conn.execute(
            versions.delete().where(versions.c.project_id == project, versions.c.id.in_(orphans))
        )
    return orphans


def count(conn: Connection, project: str | None) -> int:
    """Names in the project (in all projects for None)."""
    query = sa.select(sa.func.count()).select_from(adapters)
    if project is not None:
        query = query.where(adapters.c.project_id == project)
    return int(conn.execute(query).scalar_one())


def stored_bytes(conn: Connection, project: str) -> int:
    query = sa.select(sa.func.coalesce(sa.func.sum(versions.c.stored_bytes), 0)).where(
        versions.c.project_id == project
    )
    return int(conn.execute(query).scalar_one())


def set_problem(conn: Connection, project: str, version_id: str, problem: str) -> None:
    conn.execute(
        versions.update()
        .where(versions.c.project_id == project, versions.c.id == version_id)
        .values(problem=problem)
    )


def quota_of(conn: Connection, project: str, column: str) -> Any:
    """A project's own limit (a column of `projects`), or None for the service's."""
    return conn.execute(sa.select(projects.c[column]).where(projects.c.id == project)).scalar()
