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
    from settlement.ledger import LedgerStore, RetiredPeriod, StoredRow

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
@click.option(
    "--exports",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Also check each retired period's export in this directory (digest, rows).",
)
def verify(url: str, exports: Path | None) -> None:
    """Recompute every row hash, check the numbering has no gap but for retired periods and
    the write-once triggers are in place; exit 1 naming each row found wrong."""
    store = _open(url)
    report = store.verify(progress=_progress("verified"))
    problems = [
        (f"row {p.row_seq}" if p.row_seq is not None else "ledger", p.what)
        for p in report.problems or []
    ]
    retired = store.retired_periods()
    if exports is not None:
        problems += _check_exports(retired, exports)
    elif retired:
        click.echo(
            f"{len(retired)} retired period(s) taken from the ledger's records; "
            "--exports DIR checks their exports",
            err=True,
        )
    for where, what in problems:
        click.echo(f"{where}: {what}")
    span = f"rows {report.first_seq}..{report.last_seq}" if report.rows else "no rows"
    click.echo(f"{store.ledger_id}: {report.rows:,} rows ({span}), {len(problems)} problem(s)")
    sys.exit(0 if not problems else 1)


def _check_exports(retired: list[RetiredPeriod], directory: Path) -> list[tuple[str, str]]:
    """Each retired period's export: present, its recorded digest, rows as recorded."""
    from settlement.retention import RetentionError, check_export

    problems: list[tuple[str, str]] = []
    for period in retired:
        where = f"period {period.period}"
        path = directory / period.export_name
        if not path.is_file():
            problems.append((where, f"its export {period.export_name} is not in {directory}"))
            continue
        try:
            check = check_export(path, period.export_sha256)
        except (RetentionError, ValueError, KeyError) as exc:
            problems.append((where, f"its export cannot be read: {exc}"))
            continue
        problems += [(where, problem) for problem in check.problems]
        if (check.rows, check.first_seq, check.last_seq) != (
            period.rows,
            period.first_seq,
            period.last_seq,
        ):
            problems.append((where, "its export does not hold the rows recorded as retired"))
    return problems


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


@ledger.command()
@_url_option
@click.option(
    "--export-dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Where each retired period's export is written (keep it as carefully as the ledger).",
)
@click.option("--period", "periods", multiple=True, help="A period to retire, YYYY-MM.")
@click.option("--due", is_flag=True, help="Retire every live period older than --keep-months.")
@click.option("--keep-months", type=click.IntRange(1), default=12, show_default=True)
def retire(
    url: str, export_dir: Path, periods: tuple[str, ...], due: bool, keep_months: int
) -> None:
    """Retire whole periods: export each one's rows, check the export, drop its table. Only a
    period older than --keep-months whose every settlement group is settled can leave."""
    from settlement.retention import RetentionError, retirable
    from settlement.retention import retire as retire_period

    store = _open(url)
    now = datetime.now(UTC)
    chosen = list(periods)
    if due:
        chosen += [p for p in store.live_periods() if retirable(p, now, keep_months)]
    if not chosen:
        raise click.ClickException("nothing to retire: name --period YYYY-MM or pass --due")
    failed = 0
    for period in sorted(set(chosen)):
        try:
            done = retire_period(
                store,
                period,
                export_dir,
                now=now,
                keep_months=keep_months,
                progress=_progress(f"exported {period}"),
            )
        except RetentionError as exc:
            failed += 1
            click.echo(f"period {period}: not retired: {exc}", err=True)
            continue
        click.echo(
            f"period {period}: {done.rows:,} rows (rows {done.first_seq}..{done.last_seq}) "
            f"retired to {done.export} (sha256 {done.sha256})"
        )
    sys.exit(1 if failed else 0)


@ledger.command("check-export")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--sha256", "expected", help="The digest the ledger recorded for it.")
@click.option("--url", envvar="CGN_LEDGER_URL", help="Compare its groups with this ledger's.")
def check_export_command(path: Path, expected: str | None, url: str | None) -> None:
    """Check a retired period's export: digest, every row hash, and (with --url) that every
    settlement group of its days is recorded settled with the same count, XOR and total."""
    from settlement.groups import unsettled
    from settlement.retention import RetentionError, check_export

    try:
        check = check_export(path, expected)
    except (RetentionError, ValueError, KeyError) as exc:
        raise click.ClickException(f"{path} cannot be read: {exc}") from exc
    problems = list(check.problems)
    groups = check.counter.sorted()
    if url is not None:
        problems += unsettled(_open(url), groups)
    for problem in problems:
        click.echo(problem)
    click.echo(
        f"{path.name}: period {check.period}, {check.rows:,} rows, {len(groups)} groups, "
        f"sha256 {check.sha256}, {len(problems)} problem(s)"
    )
    sys.exit(1 if problems else 0)
