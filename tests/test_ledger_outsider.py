"""The outsider's check (issue 9): tests/outsider/recompute.py, which imports nothing of ours,
generates its own stubs from protos/, reads a day of the sandbox node's public ledger view with
only the CA file, and recomputes every row hash and each enterprise's XOR aggregate; they
equal what the node's ledger database holds."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import create_engine, select

from settlement.ledger_schema import ledger_meta, ledger_rows
from settlement.rowhash import xor_aggregate
from tests.helpers.sandbox import RunningSandbox

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "outsider" / "recompute.py"
#: What the script may import besides the standard library.
ALLOWED = {"grpc", "google", "eth_hash"}


def test_the_script_imports_only_the_stdlib_grpc_protobuf_and_keccak() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            assert node.module is not None
            imported.add(node.module.split(".")[0])
    foreign = imported - set(sys.stdlib_module_names) - ALLOWED
    assert not foreign, f"the outsider's script imports {sorted(foreign)}"
    assert {"grpc", "eth_hash"} <= imported
    # Dynamic imports are of the stubs it generated from protos/ only.
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            assert ast.unparse(node.args[0]).startswith("f'{module}_pb2")


def _ledger_rows(db: Path) -> list[Any]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(ledger_rows)).all())
    finally:
        engine.dispose()


def _ledger_id(db: Path) -> str:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            query = select(ledger_meta.c.value).where(ledger_meta.c.key == "ledger_id")
            return str(connection.execute(query).scalar_one())
    finally:
        engine.dispose()


async def _rows_of(db: Path, request_ids: set[str]) -> list[Any]:
    """Once the rows of ``request_ids`` are written (off the response's path), every row."""
    deadline = time.monotonic() + 15
    while True:
        rows = await asyncio.to_thread(_ledger_rows, db)
        if request_ids <= {r.request_id for r in rows} or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_an_outsider_recomputes_a_days_row_hashes_and_aggregates(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:12]
    request_ids = {f"outsider-{run}-{n}" for n in range(4)}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{sandbox.url}/v1/sessions",
            json={"account_id": sandbox.info["account_id"], "api_key": sandbox.info["api_key"]},
        ) as response:
            token = (await response.json())["token"]
        for request_id in sorted(request_ids):
            async with http.post(
                f"{sandbox.url}/v1/dservices/echo/outsider",
                data=b"y" * 500,
                headers={"Authorization": f"Bearer {token}", "X-Request-Id": request_id},
            ) as response:
                assert response.status == 200
                await response.read()
    db = sandbox.state_dir / "node" / "ledger.db"
    rows = await _rows_of(db, request_ids)
    ours = sorted((r for r in rows if r.request_id in request_ids), key=lambda r: r.row_seq)
    assert len(ours) == len(request_ids)
    day = datetime.fromtimestamp(ours[-1].finished_at_us / 1e6, UTC).strftime("%Y-%m-%d")

    # The script runs in a clean directory, with nothing of ours on its path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    node = sandbox.info["processes"]["node"]["endpoints"]["status"]
    command = [
        sys.executable,
        str(SCRIPT),
        "--target",
        node,
        "--ca",
        str(sandbox.state_dir / "certs" / "ca.pem"),
        "--day",
        day,
        "--protos",
        str(ROOT / "protos"),
        "--page-size",
        "3",  # several pages
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=tmp_path, env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["mismatches"] == []
    recomputed = {r["row_seq"]: bytes.fromhex(r["recomputed"]) for r in report["rows"]}

    # The stored rows of that day, up to the last the script saw (rows may have been added
    # since), are exactly the rows it recomputed, hash for hash.
    last = max(recomputed)
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1_000_000
    stored = {
        r.row_seq: r
        for r in await asyncio.to_thread(_ledger_rows, db)
        if start <= r.finished_at_us < start + 86_400_000_000 and r.row_seq <= last
    }
    assert {seq: bytes(r.row_hash) for seq, r in stored.items()} == recomputed
    # Our calls' rows are among them (those of that day: the calls may straddle midnight).
    assert ours[-1].row_seq in recomputed
    assert {r.row_seq for r in ours if r.row_seq in stored} <= set(recomputed)
    by_enterprise: dict[str, list[bytes]] = {}
    for row in stored.values():
        by_enterprise.setdefault(row.enterprise, []).append(bytes(row.row_hash))
    assert report["enterprises"] == {
        enterprise: {"rows": len(hashes), "xor": xor_aggregate(hashes).hex()}
        for enterprise, hashes in by_enterprise.items()
    }
    assert report["ledger_id"] == await asyncio.to_thread(_ledger_id, db)
