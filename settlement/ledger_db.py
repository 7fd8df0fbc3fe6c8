"""Opening a ledger database: SQLite (WAL) by default, PostgreSQL by URL; created and
upgraded to the newest schema by the Alembic migrations in ``settlement/migrations``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # 8 KiB pages (a new database only; fixed once it exists): ~1.2 KB rows pack better and
    # the insert measured 25% faster than with 4 KiB (docs/ledger.md, "Ingest speed").
    cursor.execute("PRAGMA page_size=8192")
    # WAL with synchronous=NORMAL: a commit survives a crash of the process (the WAL is in
    # the OS's page cache) but not a power loss; docs/ledger.md says what that means.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    # Ingest speed, durability unchanged (docs/ledger.md, "Ingest speed"): checkpoint the WAL
    # into the database file every ~40 MB rather than ~4 MB (each checkpoint syncs both files;
    # a commit still syncs nothing), and keep up to 64 MiB of pages (the indexes) cached.
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    cursor.execute("PRAGMA cache_size=-65536")
    # SQLite's temporary files (a commit's statement journal) in memory: each commit created,
    # wrote and deleted one in the temp directory (strace of a node under load). The
    # database and its WAL are unaffected.
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def _alembic(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def open_ledger(url: str) -> Engine:
    """Opens ``url`` (e.g. ``sqlite:///ledger.db``, ``postgresql+psycopg://...``) and brings
    its schema to the newest migration."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name != "postgresql":
        raise ValueError(f"the ledger runs on SQLite or PostgreSQL, not {engine.dialect.name}")
    config = _alembic(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return engine


def schema_revision(engine: Engine) -> tuple[str | None, str | None]:
    """(the database's migration revision, the newest one known to this code)."""
    head = ScriptDirectory.from_config(_alembic(engine)).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, head
