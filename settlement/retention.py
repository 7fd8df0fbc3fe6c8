"""Retention: the one way rows leave a ledger (SPEC 8).

A period (a calendar month, GMT, of ``finished_at``) leaves whole, never row by row: once it
is older than the kept months, every settlement group of its days is recorded settled as
computed from its rows, and its rows are exported to a file that is read back and checked
(its SHA-256, every row hash, every group against the settlement records), its table is
dropped in the same transaction that records the period retired (``ledger_periods``: its rows'
numbers, count, export file name and digest). ``verify`` then accounts for the retired numbers,
and every settled group of the period stays checkable from the export (:func:`check_export`).

The export is JSON lines: a header object, then one object per row with every stored column
(``row_seq``, ``finished_at_us``, ``enterprise``, ``request_id`` and the four byte columns in
hex), in row order. It holds the private columns too: it is the owner's copy, kept as
carefully as the database.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from settlement.groups import GroupCounter, unsettled
from settlement.ledger import PAGE, SCHEMA_VERSION, LedgerStore, StoredRow
from settlement.ledger_schema import period_bounds, period_table
from settlement.rowhash import keccak256

#: The export format's name, in its header line.
EXPORT_FORMAT = "cgn-ledger-period-export-1"
#: Months kept by default: a period leaves once it ended this many months ago.
KEEP_MONTHS = 12


class RetentionError(Exception):
    """A period cannot be retired (the message says why); nothing was changed."""


@dataclass(frozen=True)
class Retired:
    """What retiring a period did."""

    period: str
    rows: int
    first_seq: int
    last_seq: int
    export: Path
    sha256: str


def _month_index(period: str) -> int:
    year, month = (int(part) for part in period.split("-"))
    return year * 12 + month - 1


def retirable(period: str, now: datetime, keep_months: int = KEEP_MONTHS) -> bool:
    """Whether ``period`` ended at least ``keep_months`` whole months before ``now``'s month
    began (with 12, November 2025 may leave from the start of December 2026)."""
    return _month_index(period) + 1 + keep_months <= now.year * 12 + now.month - 1


def _row_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "row_seq": int(row["row_seq"]),
        "finished_at_us": int(row["finished_at_us"]),
        "enterprise": row["enterprise"],
        "request_id": row["request_id"],
        **{
            name: bytes(row[name]).hex()
            for name in ("row_hash", "public_fields", "private_fields", "custom_fields")
        },
    }


def _period_rows(store: LedgerStore, period: str) -> Iterator[dict[str, Any]]:
    table = period_table(period)
    after = 0
    with store.engine.connect() as connection:
        while page := [
            dict(r._mapping)
            for r in connection.execute(
                select(table).where(table.c.row_seq > after).order_by(table.c.row_seq).limit(PAGE)
            )
        ]:
            yield from page
            after = int(page[-1]["row_seq"])


def _read_export(path: Path) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    lines = path.open("rb")
    header = json.loads(lines.readline())
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        lines.close()
        raise RetentionError(f"{path} is not a {EXPORT_FORMAT} file")

    def rows() -> Iterator[dict[str, Any]]:
        with lines:
            for line in lines:
                yield json.loads(line)

    return header, rows()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ExportCheck:
    """What :func:`check_export` read and found."""

    period: str
    rows: int
    first_seq: int | None
    last_seq: int | None
    sha256: str
    problems: list[str]
    counter: GroupCounter


def check_export(path: Path, expected_sha256: str | None = None) -> ExportCheck:
    """Reads an export back: its digest (against ``expected_sha256`` when given), every row's
    hash recomputed from its public columns, its private and custom columns against their
    public hashes, row numbers increasing, each row inside the period; and counts every
    settlement group of its days (``counter``), for comparison with what was settled."""
    sha256 = _sha256(path)
    header, rows = _read_export(path)
    period = str(header.get("period", ""))
    low, high = period_bounds(period)
    check = ExportCheck(period, 0, None, None, sha256, [], GroupCounter())
    if expected_sha256 is not None and sha256 != expected_sha256:
        check.problems.append(f"the file's SHA-256 is {sha256}, not {expected_sha256}")
    previous = 0
    for item in rows:
        seq = int(item["row_seq"])
        blobs = {
            name: bytes.fromhex(item[name])
            for name in ("row_hash", "public_fields", "private_fields", "custom_fields")
        }
        row = StoredRow(
            seq,
            blobs["public_fields"],
            blobs["row_hash"],
            blobs["private_fields"],
            blobs["custom_fields"],
        )
        check.rows += 1
        check.first_seq = seq if check.first_seq is None else check.first_seq
        check.last_seq = seq
        if seq <= previous:
            check.problems.append(f"row {seq}: out of order after row {previous}")
        previous = seq
        if keccak256(row.public_fields) != row.row_hash:
            check.problems.append(f"row {seq}: the row hash does not match its public columns")
            continue
        public = row.public
        if keccak256(row.private_fields) != public["private_hash"]:
            check.problems.append(f"row {seq}: the private columns do not match private_hash")
        if keccak256(row.custom_fields) != public["custom_hash"]:
            check.problems.append(f"row {seq}: the custom fields do not match custom_hash")
        micros = int.from_bytes(public["finished_at"], "big", signed=True)
        if not low <= micros < high:
            check.problems.append(f"row {seq}: finished outside the period {period}")
        check.counter.add(row)
    return check


def retire(
    store: LedgerStore,
    period: str,
    directory: Path,
    *,
    now: datetime | None = None,
    keep_months: int = KEEP_MONTHS,
    progress: Callable[[int], None] | None = None,
) -> Retired:
    """Exports ``period``'s rows to ``directory``, checks the export, and drops the period's
    table while recording it retired, in one transaction. RetentionError, with nothing
    changed, when the period is not live, is too recent, or has a group not settled as its
    rows say; or when the export does not read back as written."""
    moment = now or datetime.now(UTC)
    if period not in store.live_periods():
        raise RetentionError(f"period {period} is not a live period of this ledger")
    if not retirable(period, moment, keep_months):
        raise RetentionError(
            f"period {period} is kept: it ended less than {keep_months} months before "
            f"{moment:%Y-%m}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{store.ledger_id}-{period}.jsonl"
    partial = final.with_suffix(".jsonl.partial")
    header = {
        "format": EXPORT_FORMAT,
        "ledger_id": store.ledger_id,
        "period": period,
        "schema_version": SCHEMA_VERSION,
    }
    seqs = 0
    with partial.open("wb") as file:
        file.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        for row in _period_rows(store, period):
            file.write(json.dumps(_row_json(row), sort_keys=True).encode() + b"\n")
            seqs += 1
            if progress is not None and seqs % PAGE == 0:
                progress(seqs)
        file.flush()
        os.fsync(file.fileno())
    check = check_export(partial)
    if check.problems or check.rows != seqs:
        partial.unlink()
        raise RetentionError(
            f"the export of {period} does not read back as written: "
            + "; ".join(check.problems or [f"{check.rows} rows read, {seqs} written"])
        )
    problems = unsettled(store, check.counter.sorted())
    if problems:
        partial.unlink()
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        shown = "; ".join(problems[:5]) + more
        raise RetentionError(f"period {period} has groups not settled as its rows say: {shown}")
    partial.replace(final)
    _fsync_directory(directory)
    try:
        store.drop_period(
            period,
            first_seq=check.first_seq or 0,
            last_seq=check.last_seq or 0,
            rows=check.rows,
            export_name=final.name,
            export_sha256=check.sha256,
            retired_at=moment,
        )
    except ValueError as exc:
        final.unlink()
        raise RetentionError(str(exc)) from exc
    return Retired(
        period, check.rows, check.first_seq or 0, check.last_seq or 0, final, check.sha256
    )


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
