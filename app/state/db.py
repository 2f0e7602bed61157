"""The database: an SQLAlchemy engine on SQLite (default) or PostgreSQL, migrated at start-up.

Writers take their locks up front. On SQLite a write transaction starts with BEGIN IMMEDIATE
(one writer at a time, readers unblocked under WAL), so a read-then-write never fails half way
with "database is locked"; PostgreSQL writers lock the rows they change (SELECT ... FOR UPDATE).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATE_LOCK = 0x6C6F7261  # any fixed key: "lora"


def engine_url(url: str) -> str:
    """`postgresql://` means psycopg 3 (SQLAlchemy's default driver for it is psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class Database:
    """One engine per process; `read()` and `write()` hand out a connection in a transaction."""

    def __init__(self, url: str) -> None:
        self.url = engine_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            path = make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, connect_args={"timeout": 30})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=10)

    def migrate(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is there)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        # Replicas start together: one migrates while the others wait for its lock, then find
        # the schema at head (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock).
        with self.write() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @contextmanager
    def read(self, within: Connection | None = None) -> Iterator[Connection]:
        """A connection in a transaction; `within`, a caller's own, is used as it is."""
        if within is not None:
            yield within
            return
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, within: Connection | None = None) -> Iterator[Connection]:
        """A connection in a transaction that will write; `within` as for read()."""
        if within is not None:
            yield within
            return
        with self.engine.connect() as conn:
            conn.info["write"] = True
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's begin event say how a transaction starts, not the sqlite3 module.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")
