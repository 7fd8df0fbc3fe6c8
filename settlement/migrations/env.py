"""Alembic environment of the ledger: runs on the connection ``settlement.ledger_db`` hands in
(``config.attributes["connection"]``); there is no alembic.ini."""

from __future__ import annotations

from alembic import context

from settlement.ledger_schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
