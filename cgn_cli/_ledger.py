"""``cgn ledger show | verify | groups | export``: the operator's and auditor's view of a node's
ledger database (read-only; progress on stderr for long runs)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # imported when a command runs: `cgn` itself starts without SQLAlchemy
    from settlement.ledger import LedgerStore, StoredRow

_url_option = click.option(
    "--url",
    envvar="CGN_LEDGER_URL",
    required=True,
    help="The ledger database: sqlite:///PATH or postgresql+psycopg://...",
)


def _open(url: str) -> LedgerStore:
    from sqlalchemy import select

    from settlement.ledger import LedgerStore
    from settlement.ledger_db import open_ledger
    from settlement.ledger_schema import ledger_meta

    engine = open_ledger(url)
    with engine.connect() as connection:
        ledger_id = connection.execute(
            select(ledger_meta.c.value).where(ledger_meta.c.key == "ledger_id")
        ).scalar()
    if ledger_id is None:
        raise click.ClickException("this database holds no ledger yet")
    return LedgerStore(engine, ledger_id)


def _progress(label: str) -> Callable[[int], None]:
    def report(rows: int) -> None:
        click.echo(f"{label}: {rows:,} rows", err=True)

    return report


def _row_json(row: StoredRow) -> dict[str, object]:
    return {
        "row_seq": row.row_seq,
        "row_hash": row.row_hash.hex(),
        "public": {name: value.hex() for name, value in sorted(row.public.items())},
    }


def _day(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@click.group()
def ledger() -> None:
    """Read, check, group and export a node's microtransaction ledger."""


@ledger.command()
@_url_option
@click.option("--since", help="First day (YYYY-MM-DD, GMT), inclusive.")
@click.option("--until", "until_", help="Last day (YYYY-MM-DD, GMT), exclusive.")
@click.option("--enterprise", default="", help="Only this enterprise pseudonym.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
def show(url: str, since: str | None, until_: str | None, enterprise: str, limit: int) -> None:
    """Print rows as JSON lines: the public columns exactly as hashed (hex) and the hash."""
    store = _open(url)
    for row in store.rows(_day(since), _day(until_), enterprise, limit=limit):
        click.echo(json.dumps(_row_json(row)))


@ledger.command()
@_url_option
def verify(url: str) -> None:
    """Recompute every row hash, check the numbering has no gap and the write-once triggers
    are in place; exit 1 naming each row found wrong."""
    store = _open(url)
    report = store.verify(progress=_progress("verified"))
    for problem in report.problems or []:
        where = f"row {problem.row_seq}" if problem.row_seq is not None else "ledger"
        click.echo(f"{where}: {problem.what}")
    span = f"rows {report.first_seq}..{report.last_seq}" if report.rows else "no rows"
    click.echo(
        f"{store.ledger_id}: {report.rows:,} rows ({span}), {len(report.problems or [])} problem(s)"
    )
    sys.exit(0 if report.ok else 1)


@ledger.command()
@_url_option
@click.option("--since", help="First day (YYYY-MM-DD, GMT), inclusive.")
@click.option("--until", "until_", help="Last day (YYYY-MM-DD, GMT), exclusive.")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
def export(url: str, since: str | None, until_: str | None, out: Path) -> None:
    """Write rows as JSON lines to OUT, and OUT.sha256 with the file's SHA-256."""
    store = _open(url)
    digest = hashlib.sha256()
    rows = 0
    after = 0
    with open(out, "wb") as file:
        while page := store.rows(_day(since), _day(until_), after_seq=after, limit=5000):
            for row in page:
                line = (json.dumps(_row_json(row), sort_keys=True) + "\n").encode()
                file.write(line)
                digest.update(line)
            rows += len(page)
            after = page[-1].row_seq
            click.echo(f"exported: {rows:,} rows", err=True)
    Path(f"{out}.sha256").write_text(f"{digest.hexdigest()}  {out.name}\n")
    click.echo(f"{rows:,} rows to {out} (sha256 {digest.hexdigest()})")


@ledger.command()
@_url_option
@click.option("--day", required=True, help="The GMT day, YYYY-MM-DD.")
def groups(url: str, day: str) -> None:
    """Print a day's settlement groups as JSON lines: each enterprise's and each beneficiary's
    row count, XOR aggregate hash and total (atto-CPUcoin)."""
    from settlement.groups import day_groups

    store = _open(url)
    for group in day_groups(store, date.fromisoformat(day), progress=_progress("read")):
        click.echo(
            json.dumps(
                {
                    "kind": str(group.kind),
                    "pseudonym": group.pseudonym,
                    "day": day,
                    "rows": group.rows,
                    "aggregate_hash": group.aggregate_hash.hex(),
                    "total_atto": str(group.total_atto),
                }
            )
        )
