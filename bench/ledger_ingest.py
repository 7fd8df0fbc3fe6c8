"""Benchmark ledger ingest: rows/s numbered, hashed and durably committed through the node's
background writer (``settlement.ledger_writer.LedgerWriter``), on SQLite and PostgreSQL, next
to the floor measured in the same run: the same rows (already hashed) inserted the way the
ledger inserts them (``settlement.ledger.insert_rows``: multi-row INSERTs on SQLite, COPY on
PostgreSQL), one commit per batch, nothing computed, one thread; and a plain executemany of
them.

Usage (from the repository root)::

    .venv/bin/python bench/ledger_ingest.py [--rows 200000] [--batch 5000]

"Durably committed" is docs/ledger.md's definition: SQLite in WAL mode with
synchronous=NORMAL (survives a crash of the process), PostgreSQL with its defaults (fsync on:
survives a power loss too). The PostgreSQL server is a throwaway cluster on 127.0.0.1 started
and stopped here (Debian's postgresql; skipped with a note when absent). Each figure is the best
of ``--repeat`` runs on a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cgn_common.tasks import Supervisor
from settlement.ledger import LedgerEntry, LedgerStore, Outcome, insert_rows
from settlement.ledger_db import open_ledger
from settlement.ledger_schema import create_period, ledger_rows, period_of
from settlement.ledger_writer import LedgerWriter
from settlement.split import split_fee
from tests.helpers.postgres import postgres_server, unavailable_reason

START = datetime(2026, 11, 30, tzinfo=UTC)


def _entries(count: int) -> list[LedgerEntry]:
    fee = 3 * 10**15
    payouts = split_fee(fee)
    return [
        LedgerEntry(
            finished_at=START + timedelta(microseconds=n * 137),
            outcome=Outcome.DELIVERED,
            request_id=f"req_{n:012d}",
            enterprise=f"p_ent_{n % 50:04d}",
            end_user="",
            contributor=f"p_miner_{n % 400:05d}",
            developer="p_dev_echo",
            node_operator="p_node_op",
            contributor_charity="",
            developer_charity="",
            operator_charity="",
            currency="EUR",
            fee_fiat_nano=1_500 + n % 97,
            fee_atto=fee,
            payouts=payouts,
            rate_nano_per_coin=512_000_000,
            private_fields=b"\x00\x00\x00\x08dservice\x00\x00\x00\x04echo" + n.to_bytes(8, "big"),
            custom_fields=b"",
        )
        for n in range(count)
    ]


def _fresh_sqlite(directory: Path, name: str) -> str:
    return f"sqlite:///{directory / name}"


def _fresh_postgres(server: str, name: str) -> str:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


async def _through_writer(store: LedgerStore, entries: list[LedgerEntry], batch: int) -> float:
    supervisor = Supervisor("bench")
    writer = LedgerWriter(store, supervisor, max_batch=batch)
    try:
        began = time.perf_counter()
        for entry in entries:
            await writer.record(entry)
        await writer.wait_durable(timeout_s=600)
        return time.perf_counter() - began
    finally:
        await writer.close()
        await supervisor.close()


def _ledger_rate(
    url: str, entries: list[LedgerEntry], batch: int
) -> tuple[float, list[dict[str, Any]]]:
    """rows/s through the node's path: LedgerWriter.record for every entry (checked, queued),
    then waiting until all are durable (numbered, hashed, committed by the writer's two
    worker threads). Also returns the rows as stored, for the floor."""
    engine = open_ledger(url)
    store = LedgerStore(engine, "node_bench")
    elapsed = asyncio.run(_through_writer(store, entries, batch))
    with engine.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(ledger_rows.select())]
    engine.dispose()
    return len(entries) / elapsed, rows


def _period_table(engine: Engine, rows: list[dict[str, Any]]) -> str:
    """Creates the (one) period table of ``rows`` as the ledger would, and names it."""
    (period,) = {period_of(int(row["finished_at_us"])) for row in rows}
    with engine.begin() as connection:
        return create_period(connection, period, []).name


def _executemany_rate(url: str, rows: list[dict[str, Any]], batch: int) -> float:
    """rows/s of a raw batched executemany of the same (already hashed) rows: the driver and
    the database alone (the floor before the ledger inserted with insert_rows)."""
    engine: Engine = open_ledger(url)
    columns = [c.name for c in ledger_rows.columns]
    is_pg = engine.dialect.name == "postgresql"
    marks = ", ".join(["%s" if is_pg else "?"] * len(columns))
    table = _period_table(engine, rows)
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
    tuples = [tuple(row[c] for c in columns) for row in rows]
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        began = time.perf_counter()
        for start in range(0, len(tuples), batch):
            cursor.executemany(sql, tuples[start : start + batch])
            raw.commit()
        elapsed = time.perf_counter() - began
    finally:
        raw.close()
        engine.dispose()
    return len(tuples) / elapsed


def _floor_rate(url: str, rows: list[dict[str, Any]], batch: int) -> float:
    """rows/s of the same (already hashed) rows inserted the way the ledger inserts them
    (settlement.ledger.insert_rows: multi-row INSERTs on SQLite, COPY on PostgreSQL), one
    commit per batch, on one thread, nothing computed: the driver and the database alone."""
    engine: Engine = open_ledger(url)
    columns = [c.name for c in ledger_rows.columns]
    values = [row[c] for row in rows for c in columns]
    table = _period_table(engine, rows)
    width = len(columns)
    try:
        began = time.perf_counter()
        for start in range(0, len(values), batch * width):
            with engine.begin() as connection:
                insert_rows(connection, table, values[start : start + batch * width])
        elapsed = time.perf_counter() - began
    finally:
        engine.dispose()
    return len(rows) / elapsed


def _best(runs: int, measure: Callable[[int], float]) -> float:
    return max(measure(i) for i in range(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    entries = _entries(args.rows)
    results: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="cgn-ledger-bench-") as tmp:
        directory = Path(tmp)
        stored: list[dict[str, Any]] = []

        def sqlite_ledger(i: int) -> float:
            nonlocal stored
            rate, stored = _ledger_rate(_fresh_sqlite(directory, f"l{i}.db"), entries, args.batch)
            return rate

        ledger = _best(args.repeat, sqlite_ledger)
        floor = _best(
            args.repeat,
            lambda i: _floor_rate(_fresh_sqlite(directory, f"f{i}.db"), stored, args.batch),
        )
        many = _best(
            args.repeat,
            lambda i: _executemany_rate(_fresh_sqlite(directory, f"m{i}.db"), stored, args.batch),
        )
        results.append(("SQLite (WAL, synchronous=NORMAL)", ledger, floor, many))
        reason = unavailable_reason()
        if reason:
            print(f"PostgreSQL skipped: {reason}", file=sys.stderr)
        else:
            with postgres_server(durable=True) as server:

                def pg_ledger(i: int) -> float:
                    nonlocal stored
                    url = _fresh_postgres(server, f"ledger_{i}")
                    rate, stored = _ledger_rate(url, entries, args.batch)
                    return rate

                ledger = _best(args.repeat, pg_ledger)
                floor = _best(
                    args.repeat,
                    lambda i: _floor_rate(
                        _fresh_postgres(server, f"floor_{i}"), stored, args.batch
                    ),
                )
                many = _best(
                    args.repeat,
                    lambda i: _executemany_rate(
                        _fresh_postgres(server, f"many_{i}"), stored, args.batch
                    ),
                )
                results.append(("PostgreSQL 15 (fsync on)", ledger, floor, many))
    print(f"{args.rows:,} rows, batches of {args.batch:,}, best of {args.repeat}")
    print(
        "| database | ledger: hashed + committed rows/s "
        "| floor: raw insert (insert_rows) rows/s | ledger / floor "
        "| raw executemany rows/s |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, ledger, floor, many in results:
        print(f"| {name} | {ledger:,.0f} | {floor:,.0f} | {ledger / floor:.2f} | {many:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
