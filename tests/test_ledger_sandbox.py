"""The node records what it serves: every call the sandbox answered has exactly one ledger row,
delivered, priced, under the enterprise's pseudonym, with its credential headers redacted."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import aiohttp
from sqlalchemy import create_engine, select

from cgn_cli.sandbox import OPERATOR
from cgn_common.rpc import open_channel
from generated.cgn.admin.v1 import account_admin_service_pb2 as acct_pb
from generated.cgn.admin.v1 import account_admin_service_pb2_grpc as acct_grpc
from settlement.ledger import decode_pairs
from settlement.ledger_schema import ledger_rows
from tests.helpers.sandbox import RunningSandbox


async def _pseudonym(sb: RunningSandbox, account_id: str) -> str:
    admin = sb.info["processes"]["central"]["endpoints"]["admin"]
    async with open_channel(admin, sb.tls(OPERATOR)) as channel:
        response = await acct_grpc.AccountAdminServiceStub(channel).GetAccount(
            acct_pb.GetAccountRequest(account_id=account_id), timeout=10
        )
    pseudonym: str = response.account.pseudonym
    return pseudonym


async def _rows(sb: RunningSandbox, request_ids: list[str]) -> list[Any]:
    """The node's ledger rows of ``request_ids``, once there are as many (bounded wait: rows
    are written off the response's path)."""
    engine = create_engine(f"sqlite:///{sb.state_dir / 'node' / 'ledger.db'}")
    try:
        deadline = time.monotonic() + 15
        while True:
            with engine.connect() as connection:
                rows = list(
                    connection.execute(
                        select(ledger_rows).where(ledger_rows.c.request_id.in_(request_ids))
                    ).all()
                )
            if len(rows) >= len(request_ids) or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)
    finally:
        engine.dispose()


async def test_every_answered_call_has_one_priced_row(sandbox: RunningSandbox) -> None:
    run = uuid.uuid4().hex[:12]
    request_ids = [f"ledger-{run}-{n}" for n in range(5)]
    async with aiohttp.ClientSession() as http:
        token = await sandbox.session_token()
        for request_id in request_ids:
            async with http.post(
                f"{sandbox.url}/v1/dservices/echo/billed?n=1",
                data=b"x" * 1000,
                headers={
                    "Authorization": f"Bearer {token}",
                    "X-Request-Id": request_id,
                    "Cookie": "session=secret-cookie",
                },
            ) as response:
                assert response.status == 200
                await response.read()
    rows = await _rows(sandbox, request_ids)
    assert sorted(r.request_id for r in rows) == sorted(request_ids)  # one row each
    pseudonym = await _pseudonym(sandbox, sandbox.info["account_id"])
    for row in rows:
        public = decode_pairs(row.public_fields)
        assert public["outcome"] == b"delivered"
        assert public["enterprise"] == pseudonym.encode()
        assert public["contributor"]  # the miner's pseudonym
        assert int.from_bytes(public["fee_atto"], "big") > 0
        private = decode_pairs(row.private_fields)
        assert private["request_line"] == b"POST /billed?n=1"
        headers = private["request_headers"]
        assert b"secret-cookie" not in headers
        assert b"[redacted]" in headers


async def test_a_call_whose_deadline_passed_on_the_miner_is_billed_as_abandoned(
    sandbox: RunningSandbox,
) -> None:
    request_id = f"ledger-abandoned-{uuid.uuid4().hex[:12]}"
    async with aiohttp.ClientSession() as http:
        token = await sandbox.session_token()
        async with http.get(
            f"{sandbox.url}/v1/dservices/echo/slow",
            headers={
                "Authorization": f"Bearer {token}",
                "X-Request-Id": request_id,
                "X-Echo-Burn-Cpu-Ms": "1500",  # CPU-bound past the deadline
                "X-CGN-Timeout-Ms": "600",
            },
        ) as response:
            assert response.status == 504
    rows = await _rows(sandbox, [request_id])
    assert len(rows) == 1
    public = decode_pairs(rows[0].public_fields)
    private = decode_pairs(rows[0].private_fields)
    assert public["outcome"] == b"abandoned"
    # Billed for the CPU the miner metered up to the cancel, reported in its answer to the
    # WorkCancel: some of the burn (the deadline cut it), not all of it, not nothing.
    cpu_us = int.from_bytes(private["cpu_time_us"], "big")
    assert 50_000 <= cpu_us < 1_500_000
    assert int.from_bytes(public["fee_atto"], "big") > 0
    assert public["contributor"] != b""


async def test_the_gateway_shows_public_rows_to_anyone_and_private_ones_to_their_owner(
    sandbox: RunningSandbox,
) -> None:
    request_id = f"ledger-gw-{uuid.uuid4().hex[:12]}"
    async with aiohttp.ClientSession() as http:
        token = await sandbox.session_token()
        auth = {"Authorization": f"Bearer {token}"}
        async with http.post(
            f"{sandbox.url}/v1/dservices/echo/gw",
            data=b"abc",
            headers={**auth, "X-Request-Id": request_id},
        ) as response:
            assert response.status == 200
        (row,) = await _rows(sandbox, [request_id])

        async with http.get(f"{sandbox.url}/v1/ledger/requests/{request_id}") as response:
            assert response.status == 401  # the owner view needs the session
        async with http.get(
            f"{sandbox.url}/v1/ledger/requests/{request_id}", headers=auth
        ) as response:
            assert response.status == 200, await response.text()
            (mine,) = (await response.json())["rows"]
        assert mine["request_id"] == request_id
        assert base64.b64decode(mine["row"]["row_hash"]) == row.row_hash
        assert mine["status_code"] == 200
        async with http.get(
            f"{sandbox.url}/v1/ledger/requests/no-such-request", headers=auth
        ) as response:
            assert response.status == 404
            assert (await response.json())["error"]["reason"] == "LEDGER_ROW_NOT_FOUND"

        # The public view, without any credential: this row among a day's, as hashed.
        found = None
        token_param = ""
        while found is None:
            async with http.get(
                f"{sandbox.url}/v1/ledger/rows?page_size=50{token_param}"
            ) as response:
                assert response.status == 200, await response.text()
                page = await response.json()
            for public in page.get("rows", []):
                if base64.b64decode(public["row_hash"]) == row.row_hash:
                    found = public
            if found is None:
                assert page.get("next_page_token"), "the row is not in the public view"
                token_param = f"&page_token={page['next_page_token']}"
        # proto3 JSON leaves out default values: an empty column has no "value".
        columns = {c["name"]: base64.b64decode(c.get("value", "")) for c in found["columns"]}
        assert columns == decode_pairs(row.public_fields)
        async with http.get(f"{sandbox.url}/v1/ledger/rows?start=yesterday") as response:
            assert response.status == 400
