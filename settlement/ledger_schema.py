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
re-encoding, and keeps the insert to eight values a row (bench/ledger_ingest.py).

Rows live in one table per period (a calendar month, GMT, of ``finished_at``:
:func:`period_table`), so that retention removes a whole period at once (DROP TABLE) and
never deletes a row; the ``ledger_rows`` view unites the live ones. The fixed tables are
created and upgraded only by the Alembic migrations in ``settlement/migrations``; a period's
table is created by the writer when its first row arrives (:func:`create_period`), so a
migration that changes the rows' schema must change every live period table
(``ledger_periods`` lists them). This module is the one description of both.
"""

from __future__ import annotations

import calendar
import functools
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
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


def _row_columns() -> list[Column[Any]]:
    return [
        # Gap-free per ledger from 1: a missing number is a deleted row. INTEGER on SQLite
        # makes it the table's rowid (one B-tree fewer per insert).
        Column(
            "row_seq",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        # Microseconds since the Unix epoch, UTC (the public finished_at).
        Column("finished_at_us", BigInteger, nullable=False),
        Column("enterprise", String(128), nullable=False),
        Column("request_id", String(128), nullable=False),
        Column("row_hash", LargeBinary(32), nullable=False),
        Column("public_fields", LargeBinary, nullable=False),
        Column("private_fields", LargeBinary, nullable=False),
        Column("custom_fields", LargeBinary, nullable=False),
    ]


#: Every live row of the ledger: a view, the UNION ALL of the live period tables
#: (:func:`period_table`), rebuilt in the transaction that adds or retires a period (both
#: databases push a query's filters and ORDER BY row_seq LIMIT down into each table's
#: indexes). Readers select from it; rows are inserted into their period's table.
ledger_rows = Table("ledger_rows", MetaData(), *_row_columns())

#: The ledger's periods: one calendar month (GMT) of rows each, by ``finished_at``. A live
#: period's rows are in its table; a retired one's were exported to ``export_name`` (its
#: SHA-256 ``export_sha256``) and its table dropped whole (settlement/retention.py).
ledger_periods = Table(
    "ledger_periods",
    metadata,
    Column("period", String(7), primary_key=True),  # "YYYY-MM"
    Column("state", String(16), nullable=False),  # "live" or "retired"
    Column("first_seq", BigInteger, nullable=True),  # the retired period's rows
    Column("last_seq", BigInteger, nullable=True),
    Column("row_count", BigInteger, nullable=True),
    Column("export_name", Text, nullable=True),
    Column("export_sha256", String(64), nullable=True),
    Column("retired_at_us", BigInteger, nullable=True),
)


def period_of(finished_at_us: int) -> str:
    """The period ("YYYY-MM", GMT) of a row that finished at ``finished_at_us``."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=finished_at_us)
    return f"{moment.year:04d}-{moment.month:02d}"


def period_bounds(period: str) -> tuple[int, int]:
    """The period's ``[start, end)`` in microseconds since the epoch."""
    year, month = (int(part) for part in period.split("-"))
    start = date(year, month, 1).toordinal() - _EPOCH_ORDINAL
    end = start + calendar.monthrange(year, month)[1]
    return start * _DAY_US, end * _DAY_US


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_US = 86_400_000_000


_PERIOD = re.compile(r"\A\d{4}-(0[1-9]|1[0-2])\Z")


def period_table_name(period: str) -> str:
    """The table of a period's rows, e.g. ``ledger_rows_2026_11``."""
    if not _PERIOD.match(period):
        raise ValueError(f"a period is YYYY-MM, not {period!r}")
    return "ledger_rows_" + period.replace("-", "_")


@functools.cache
def period_table(period: str) -> Table:
    """The table of one period's rows, with its indexes (same columns as ``ledger_rows``)."""
    name = period_table_name(period)
    table = Table(name, MetaData(), *_row_columns())
    Index(f"{name}_time", table.c.finished_at_us)
    Index(f"{name}_enterprise_time", table.c.enterprise, table.c.finished_at_us)
    Index(f"{name}_request", table.c.request_id)
    return table


def view_ddl(dialect: str, periods: list[str]) -> list[str]:
    """The statements that (re)build the ``ledger_rows`` view over ``periods``' tables."""
    columns = ", ".join(column.name for column in ledger_rows.columns)
    if periods:
        body = " UNION ALL ".join(
            f"SELECT {columns} FROM {period_table_name(p)}" for p in sorted(periods)
        )
    else:
        blob = "BYTEA" if dialect == "postgresql" else "BLOB"
        body = (
            "SELECT CAST(NULL AS BIGINT) AS row_seq, CAST(NULL AS BIGINT) AS finished_at_us, "
            "CAST(NULL AS VARCHAR(128)) AS enterprise, CAST(NULL AS VARCHAR(128)) AS request_id, "
            f"CAST(NULL AS {blob}) AS row_hash, CAST(NULL AS {blob}) AS public_fields, "
            f"CAST(NULL AS {blob}) AS private_fields, CAST(NULL AS {blob}) AS custom_fields "
            "WHERE 1 = 0"
        )
    return ["DROP VIEW IF EXISTS ledger_rows", f"CREATE VIEW ledger_rows AS {body}"]


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


def trigger_names(dialect: str, table: str) -> frozenset[str]:
    """The triggers :func:`trigger_ddl` makes on ``table`` (verify checks each is in place)."""
    actions = ("update", "delete") if dialect == "sqlite" else ("change", "truncate")
    return frozenset(f"{table}_no_{action}" for action in actions)


_IMMUTABLE_MESSAGE = "ledger rows are write-once: UPDATE and DELETE are refused"


def trigger_ddl(dialect: str, table: str = "ledger_rows") -> list[str]:
    """The statements that make ``table`` refuse UPDATE and DELETE (and TRUNCATE on
    PostgreSQL). Retention removes a whole period's table instead (DROP TABLE)."""
    statements: list[str] = []
    if dialect == "sqlite":
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


def create_period(connection: Connection, period: str, live: list[str]) -> Table:
    """Creates ``period``'s table (indexes, write-once triggers), registers it live and
    rebuilds the view over it and ``live`` (the other live periods), in ``connection``'s
    transaction."""
    table = period_table(period)
    table.create(connection)
    dialect = connection.dialect.name
    for statement in trigger_ddl(dialect, table.name):
        connection.exec_driver_sql(statement)
    connection.execute(ledger_periods.insert().values(period=period, state="live"))
    for statement in view_ddl(dialect, [*live, period]):
        connection.exec_driver_sql(statement)
    return table
