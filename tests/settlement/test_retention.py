"""Retention on SQLite and PostgreSQL: a period leaves whole (its table dropped, never a row
DELETE: the write-once triggers stay in place throughout), only when old enough and settled,
after an export that is read back and checked; the ledger still verifies, numbering goes on,
and every settled group stays checkable from the export."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from cgn_cli.main import cli
from settlement.groups import day_groups, record_settled, unsettled
from settlement.ledger import InvalidEntryError, LedgerEntry, LedgerStore
from settlement.ledger_db import _alembic, open_ledger
from settlement.ledger_schema import ledger_rows
from settlement.retention import RetentionError, check_export, retire
from tests.settlement.test_ledger_store import entry

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
OCTOBER = datetime(2025, 10, 30, tzinfo=UTC)  # rows on 30 and 31 October 2025
NOVEMBER = datetime(2025, 11, 30, tzinfo=UTC)


def _at(n: int, moment: datetime, enterprise: str = "p_ent_a") -> LedgerEntry:
    return replace(entry(n, enterprise=enterprise), finished_at=moment + timedelta(hours=n))


def _ledger(url: str) -> LedgerStore:
    store = LedgerStore(open_ledger(url), "node_1")
    store.append(
        [_at(n, OCTOBER, "p_ent_a" if n % 2 else "p_ent_b") for n in range(40)]  # 30-31 Oct
        + [_at(n, NOVEMBER) for n in range(40, 45)]  # 1-2 Dec 2025, rows 41-45
        + [_at(n - 45, NOW - timedelta(hours=3)) for n in range(45, 48)]
    )
    return store


def _settle(store: LedgerStore, *days: date) -> None:
    for day in days:
        record_settled(store, day_groups(store, day), b"\x11" * 32)


def test_a_settled_old_period_leaves_whole_and_stays_checkable(
    ledger_url: str, tmp_path: Path
) -> None:
    store = _ledger(ledger_url)
    exports = tmp_path / "exports"
    try:
        assert store.live_periods() == ["2025-10", "2025-12", "2026-11"]
        with pytest.raises(RetentionError, match="not settled"):
            retire(store, "2025-10", exports, now=NOW)
        assert store.count() == 48  # refused: nothing changed, no export left behind
        assert list(exports.iterdir()) == []
        _settle(store, date(2025, 10, 30))
        with pytest.raises(RetentionError, match="2025-10-31 enterprise p_ent_a: not settled"):
            retire(store, "2025-10", exports, now=NOW)
        _settle(store, date(2025, 10, 31))
        with pytest.raises(RetentionError, match="kept"):  # ended 1 Jan 2026: too recent
            retire(store, "2025-12", exports, now=NOW)

        done = retire(store, "2025-10", exports, now=NOW)

        assert (done.rows, done.first_seq, done.last_seq) == (40, 1, 40)
        assert store.live_periods() == ["2025-12", "2026-11"]
        assert "ledger_rows_2025_10" not in inspect(store.engine).get_table_names()
        assert store.count() == 8
        report = store.verify()
        assert report.ok, report.problems
        assert (report.first_seq, report.last_seq) == (41, 48)
        # Numbering goes on after the retired rows, in this store and a reopened one.
        assert LedgerStore(store.engine, "node_1").append([_at(0, NOW)])[0].row_seq == 49
        # The export holds every row and every settled group of the period.
        check = check_export(done.export, done.sha256)
        assert check.problems == []
        assert (check.rows, check.first_seq, check.last_seq) == (40, 1, 40)
        assert len(check.counter.sorted()) == 2 * 2 + 2 * 3  # 2 days: 2 enterprises, 3 payees
        assert unsettled(store, check.counter.sorted()) == []
        # A row of a retired period can no longer be written.
        with pytest.raises(InvalidEntryError, match="retired"):
            store.append([_at(1, OCTOBER)])
        # The live periods' tables still refuse a row DELETE: retention never used one.
        with pytest.raises(DBAPIError, match="write-once"), store.engine.begin() as connection:
            connection.execute(text("DELETE FROM ledger_rows_2025_12"))
    finally:
        store.engine.dispose()


def test_the_cli_retires_due_periods_and_verifies_their_exports(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = _ledger(url)
    _settle(store, date(2025, 10, 30), date(2025, 10, 31))
    store.engine.dispose()
    exports = tmp_path / "exports"
    runner = CliRunner()
    # --due picks the periods old enough: with one month kept, 2025-12 is due too (and
    # refused: it is not settled), which makes the run exit 1.
    retire_due = ["ledger", "retire", "--url", url, "--export-dir", str(exports), "--due"]
    retired = runner.invoke(cli, [*retire_due, "--keep-months", "1"])
    assert "period 2025-10: 40 rows (rows 1..40) retired" in retired.output
    assert "period 2025-12: not retired: period 2025-12 has groups not settled" in retired.output
    assert retired.exit_code == 1
    verified = runner.invoke(cli, ["ledger", "verify", "--url", url, "--exports", str(exports)])
    assert verified.exit_code == 0, verified.output
    (export,) = exports.iterdir()
    checked = runner.invoke(cli, ["ledger", "check-export", str(export), "--url", url])
    assert checked.exit_code == 0, checked.output
    assert "period 2025-10, 40 rows, 10 groups" in checked.output
    # One changed byte in the export: its digest and the row's hash both tell.
    lines = export.read_text().splitlines()
    row = json.loads(lines[5])
    row["public_fields"] = row["public_fields"].replace("455552", "555344", 1)  # EUR -> USD
    lines[5] = json.dumps(row, sort_keys=True)
    export.write_text("\n".join(lines) + "\n")
    broken = runner.invoke(cli, ["ledger", "verify", "--url", url, "--exports", str(exports)])
    assert broken.exit_code == 1
    assert "period 2025-10: the file's SHA-256 is" in broken.output
    assert "period 2025-10: row 5: the row hash does not match its public columns" in broken.output


def test_a_row_deleted_beside_a_retired_period_is_still_found(
    ledger_url: str, tmp_path: Path
) -> None:
    store = _ledger(ledger_url)
    try:
        _settle(store, date(2025, 10, 30), date(2025, 10, 31))
        retire(store, "2025-10", tmp_path, now=NOW)
        with store.engine.begin() as connection:
            if store.engine.dialect.name == "sqlite":
                connection.execute(text("DROP TRIGGER ledger_rows_2025_12_no_delete"))
            else:
                connection.execute(
                    text("DROP TRIGGER ledger_rows_2025_12_no_change ON ledger_rows_2025_12")
                )
            connection.execute(text("DELETE FROM ledger_rows_2025_12 WHERE row_seq = 41"))
        found = {(p.row_seq, p.what) for p in store.verify().problems or []}
        assert (42, "rows 41 to 41 are missing before it") in found
    finally:
        store.engine.dispose()


def test_the_migration_moves_an_existing_ledgers_rows_into_their_periods(
    ledger_url: str, tmp_path: Path
) -> None:
    # Rows as the current code writes them, copied into a ledger at revision 0001 (one
    # table), which is then upgraded.
    source = _ledger(f"sqlite:///{tmp_path / 'source.db'}")
    with source.engine.connect() as connection:
        rows = [tuple(r) for r in connection.execute(ledger_rows.select().order_by("row_seq"))]
    source.engine.dispose()
    engine = create_engine(ledger_url)
    config = _alembic(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text("INSERT INTO ledger_meta (key, value) VALUES ('ledger_id', 'node_1')")
        )
        connection.execute(
            ledger_rows.insert(),
            [dict(zip(ledger_rows.columns.keys(), r, strict=True)) for r in rows],
        )
    engine.dispose()
    store = LedgerStore(open_ledger(ledger_url), "node_1")
    try:
        assert store.live_periods() == ["2025-10", "2025-12", "2026-11"]
        assert [(r.row_seq, r.row_hash) for r in store.rows(limit=100)] == [
            (r[0], bytes(r[4])) for r in rows
        ]
        assert store.verify().ok
        assert store.append([_at(1, NOW)])[0].row_seq == 49
    finally:
        store.engine.dispose()


def test_a_period_holding_other_rows_than_exported_is_not_dropped(ledger_url: str) -> None:
    store = _ledger(ledger_url)
    try:
        with pytest.raises(ValueError, match=r"holds rows 1\.\.40 \(40\), not the 39 exported"):
            store.drop_period(
                "2025-10",
                first_seq=1,
                last_seq=39,
                rows=39,  # as if row 40 arrived after the export was written
                export_name="node_1-2025-10.jsonl",
                export_sha256="0" * 64,
                retired_at=NOW,
            )
        assert store.live_periods() == ["2025-10", "2025-12", "2026-11"]
        assert store.count() == 48
        assert store.retired_periods() == []
    finally:
        store.engine.dispose()
