"""``cgn ledger show | verify | export`` on a real SQLite ledger."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import text

from cgn_cli.main import cli
from settlement.ledger import LedgerStore
from settlement.ledger_db import open_ledger
from tests.settlement.test_ledger_store import entry


def test_show_verify_and_export(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = open_ledger(url)
    LedgerStore(engine, "node_1").append([entry(n) for n in range(3)])
    runner = CliRunner()

    shown = runner.invoke(cli, ["ledger", "show", "--url", url])
    assert shown.exit_code == 0, shown.output
    rows = [json.loads(line) for line in shown.output.splitlines()]
    assert [r["row_seq"] for r in rows] == [1, 2, 3]
    assert bytes.fromhex(rows[0]["public"]["currency"]) == b"EUR"

    verified = runner.invoke(cli, ["ledger", "verify", "--url", url])
    assert verified.exit_code == 0, verified.output
    assert "3 rows (rows 1..3), 0 problem(s)" in verified.output

    grouped = runner.invoke(cli, ["ledger", "groups", "--url", url, "--day", "2026-11-30"])
    assert grouped.exit_code == 0, grouped.output
    listed = [json.loads(line) for line in grouped.output.splitlines() if line.startswith("{")]
    assert next((g["kind"], g["pseudonym"], g["rows"]) for g in listed) == (
        "enterprise",
        "p_ent_a",
        3,
    )

    out = tmp_path / "export.jsonl"
    exported = runner.invoke(cli, ["ledger", "export", "--url", url, str(out)])
    assert exported.exit_code == 0, exported.output
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert Path(f"{out}.sha256").read_text().split()[0] == digest
    assert len(out.read_text().splitlines()) == 3

    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER ledger_rows_2026_11_no_delete"))
        connection.execute(text("DELETE FROM ledger_rows_2026_11 WHERE row_seq = 2"))
    engine.dispose()
    broken = runner.invoke(cli, ["ledger", "verify", "--url", url])
    assert broken.exit_code == 1
    assert "row 3: rows 2 to 2 are missing before it" in broken.output
    assert "ledger: the write-once triggers of ledger_rows_2026_11 are missing" in broken.output
