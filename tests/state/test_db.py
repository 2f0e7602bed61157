"""The database on SQLite and on a real PostgreSQL: migrations, and writers that serialize."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from app.state import Database
from app.state.tables import DEFAULT_PROJECT, projects


def test_migrate_creates_the_default_project_once(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    db.migrate()  # a second start finds the schema current
    with db.read() as conn:
        ids = conn.execute(sa.select(projects.c.id)).scalars().all()
    db.close()
    assert ids == [DEFAULT_PROJECT]


def test_postgresql_url_uses_psycopg_3() -> None:
    db = Database("postgresql://u@127.0.0.1:1/x")
    assert db.engine.dialect.driver == "psycopg"


def test_concurrent_read_modify_writes_lose_nothing(database_url: str) -> None:
    """Each writer reads a counter and writes it back plus one: none may lose another's add."""
    db = Database(database_url)
    db.migrate()
    with db.write() as conn:
        conn.execute(projects.update().values(max_adapters=0))

    def add(times: int) -> None:
        for _ in range(times):
            with db.write() as conn:
                query = sa.select(projects.c.max_adapters).where(projects.c.id == DEFAULT_PROJECT)
                value = conn.execute(query.with_for_update()).scalar_one()
                conn.execute(projects.update().values(max_adapters=value + 1))

    threads = [threading.Thread(target=add, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.read() as conn:
        total = conn.execute(sa.select(projects.c.max_adapters)).scalar_one()
    db.close()
    assert total == 100
