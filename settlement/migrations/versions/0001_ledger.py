"""The ledger: rows, settlement groups, meta; write-once triggers.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from settlement.ledger_schema import Uint256, trigger_ddl

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    text = sa.String(128)
    op.create_table(
        "ledger_rows",
        sa.Column("row_seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("finished_at_us", sa.BigInteger, nullable=False),
        sa.Column("enterprise", text, nullable=False),
        sa.Column("request_id", text, nullable=False),
        sa.Column("row_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("public_fields", sa.LargeBinary, nullable=False),
        sa.Column("private_fields", sa.LargeBinary, nullable=False),
        sa.Column("custom_fields", sa.LargeBinary, nullable=False),
    )
    op.create_index("ledger_rows_time", "ledger_rows", ["finished_at_us"])
    op.create_index("ledger_rows_enterprise_time", "ledger_rows", ["enterprise", "finished_at_us"])
    op.create_index("ledger_rows_request", "ledger_rows", ["request_id"])
    op.create_table(
        "ledger_settlements",
        sa.Column("group_kind", sa.String(16), primary_key=True),
        sa.Column("day", sa.Integer, primary_key=True),
        sa.Column("pseudonym", text, primary_key=True),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("aggregate_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("total_atto", Uint256, nullable=False),
        sa.Column("settled", sa.Boolean, nullable=False),
        sa.Column("transaction_hash", sa.LargeBinary(32), nullable=True),
    )
    for statement in trigger_ddl(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the ledger is never downgraded: its rows are write-once")
