"""The ledger's tables (SQLAlchemy Core) and the triggers that make rows write-once.

One row per finished work unit, in the five column classes of SPEC section 8:

- immutable / internal / public: ``public_fields``, the canonical pair encoding of the public
  columns (``settlement.rowhash.PUBLIC_COLUMNS_V1``) stored exactly as hashed into
  ``row_hash``; ``finished_at_us`` and ``enterprise`` repeat two of them as indexed columns
  (``verify`` checks they agree);
- immutable / internal / private: ``private_fields``, the pair encoding of the private columns
  (``PRIVATE_COLUMNS_V1``, with the request id among them), hashed into the public
  ``private_hash``; ``request_id`` repeats it as an indexed column;
- immutable / custom / private: ``custom_fields``, the enterprise's fields and their salt,
  hashed into the public ``custom_hash`` (immutable / custom / public);
- mutable / internal / private: ``ledger_settlements``, one row per settlement group (a day
  of one entity), with its payment status and settling transaction.

Storing the public columns as the bytes that are hashed makes the public view a copy, not a
re-encoding, and keeps the insert to eight values a row (bench/ledger_ingest.py). Tables are
created and upgraded only by the Alembic migrations in ``settlement/migrations``; this module
is their one description.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
)

metadata = MetaData()

#: The tables whose rows no UPDATE or DELETE may touch (triggers, both databases).
IMMUTABLE_TABLES = ("ledger_rows",)


class Uint256(TypeDecorator[int]):
    """A non-negative integer below 2**256: NUMERIC(78, 0) on PostgreSQL, decimal text on
    SQLite (whose INTEGER is 64-bit)."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(78, 0))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return Decimal(value) if dialect.name == "postgresql" else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


ledger_meta = Table(
    "ledger_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

ledger_rows = Table(
    "ledger_rows",
    metadata,
    # Gap-free per ledger from 1: a missing number is a deleted row.
    Column("row_seq", BigInteger, primary_key=True, autoincrement=False),
    # Microseconds since the Unix epoch, UTC (the public finished_at).
    Column("finished_at_us", BigInteger, nullable=False),
    Column("enterprise", String(128), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("row_hash", LargeBinary(32), nullable=False),
    Column("public_fields", LargeBinary, nullable=False),
    Column("private_fields", LargeBinary, nullable=False),
    Column("custom_fields", LargeBinary, nullable=False),
)
Index("ledger_rows_time", ledger_rows.c.finished_at_us)
Index("ledger_rows_enterprise_time", ledger_rows.c.enterprise, ledger_rows.c.finished_at_us)
Index("ledger_rows_request", ledger_rows.c.request_id)

ledger_settlements = Table(
    "ledger_settlements",
    metadata,
    # "enterprise" or "beneficiary": whose day of rows the group is.
    Column("group_kind", String(16), primary_key=True),
    Column("day", Integer, primary_key=True),  # days since 1970-01-01 (GMT)
    Column("pseudonym", String(128), primary_key=True),
    Column("row_count", BigInteger, nullable=False),
    Column("aggregate_hash", LargeBinary(32), nullable=False),
    Column("total_atto", Uint256, nullable=False),
    Column("settled", Boolean, nullable=False, default=False),
    Column("transaction_hash", LargeBinary(32), nullable=True),
)

#: The triggers trigger_ddl makes, per dialect (verify checks every one is in place).
TRIGGER_NAMES = {
    "sqlite": frozenset(
        f"{table}_no_{action}" for table in IMMUTABLE_TABLES for action in ("update", "delete")
    ),
    "postgresql": frozenset(
        f"{table}_no_{action}" for table in IMMUTABLE_TABLES for action in ("change", "truncate")
    ),
}

_IMMUTABLE_MESSAGE = "ledger rows are write-once: UPDATE and DELETE are refused"


def trigger_ddl(dialect: str) -> list[str]:
    """The statements that make IMMUTABLE_TABLES refuse UPDATE and DELETE (and TRUNCATE on
    PostgreSQL). Retention removes whole periods instead (a file, a partition)."""
    statements: list[str] = []
    if dialect == "sqlite":
        for table in IMMUTABLE_TABLES:
            for action in ("UPDATE", "DELETE"):
                statements.append(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{_IMMUTABLE_MESSAGE}'); END"
                )
    elif dialect == "postgresql":
        statements.append(
            "CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{_IMMUTABLE_MESSAGE}'; END $$ LANGUAGE plpgsql"
        )
        for table in IMMUTABLE_TABLES:
            statements.append(
                f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
            )
            statements.append(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
            )
    else:
        raise ValueError(f"the ledger runs on SQLite or PostgreSQL, not {dialect}")
    return statements
