"""Rows in one table per period (a calendar month of finished_at), so that retention drops a
whole period and never deletes a row; ``ledger_rows`` becomes a view over the live ones.

Rows of an existing ledger move to their period's table, numbers and bytes unchanged.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from settlement.ledger_schema import create_period, period_bounds, period_of, view_ddl

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_periods",
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=True),
        sa.Column("last_seq", sa.BigInteger, nullable=True),
        sa.Column("row_count", sa.BigInteger, nullable=True),
        sa.Column("export_name", sa.Text, nullable=True),
        sa.Column("export_sha256", sa.String(64), nullable=True),
        sa.Column("retired_at_us", sa.BigInteger, nullable=True),
    )
    connection = op.get_bind()
    op.rename_table("ledger_rows", "ledger_rows_v1")
    days = connection.exec_driver_sql(
        "SELECT DISTINCT finished_at_us / 86400000000 FROM ledger_rows_v1"
    ).scalars()
    live: list[str] = []
    for period in sorted({period_of(int(day) * 86_400_000_000) for day in days}):
        table = create_period(connection, period, live)
        start, end = period_bounds(period)
        connection.exec_driver_sql(
            f"INSERT INTO {table.name} SELECT * FROM ledger_rows_v1 "
            f"WHERE finished_at_us >= {start} AND finished_at_us < {end}"
        )
        live.append(period)
    # Every row is in its period's table now. DROP TABLE is not a row DELETE (the old
    # table's write-once triggers go with it).
    op.drop_table("ledger_rows_v1")
    if not live:
        for statement in view_ddl(connection.dialect.name, live):
            op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the ledger is never downgraded: its rows are write-once")
