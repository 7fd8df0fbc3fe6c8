"""Central's database engine: SQLite (WAL) by default, PostgreSQL by URL in production."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel

import central.accounts
import central.registry
import central.revocations


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


async def open_engine(url: str) -> AsyncEngine:
    """Opens ``url`` (e.g. ``sqlite+aiosqlite:///central.db``) and creates missing tables."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    _ = (
        central.accounts.AccountRow,
        central.accounts.AccountPayoutRow,
        central.accounts.AccountLimitsRow,
        central.revocations.SessionEpochRow,
    )
    return engine
