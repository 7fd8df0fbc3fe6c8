"""The work path under faults, through the shared sandbox: a poisoned answer is a 502 that
evicts nobody, a hanging DService is a 504 that cancels the DService call, a DApp that goes
away cancels its work, and a request no miner may run delays nobody."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from cgn_cli._admin import AdminClient
from cgn_common.certs import Identity, Role
from cgn_common.ids import new_id
from cgn_common.types import AccountKind, Tier
from tests.helpers import journal
from tests.helpers.sandbox import RunningSandbox
from tests.helpers.wait import until


def _journal_dir(sb: RunningSandbox) -> Path:
    return sb.state_dir.parent / "journal"


async def _token(http: aiohttp.ClientSession, sb: RunningSandbox, account: str, key: str) -> str:
    async with http.post(
        f"{sb.url}/v1/sessions", json={"account_id": account, "api_key": key}
    ) as response:
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
    return str(data["token"])


async def _demo_token(http: aiohttp.ClientSession, sb: RunningSandbox) -> str:
    return await _token(http, sb, sb.info["account_id"], sb.info["api_key"])


def _admin(sb: RunningSandbox) -> AdminClient:
    tls = sb.tls(Identity(Role.OPERATOR, "sandbox-operator"))
    return AdminClient(sb.info["processes"]["central"]["endpoints"]["admin"], tls)


def _node_log_count(sb: RunningSandbox, event: str) -> int:
    return (sb.state_dir / "logs" / "node.log").read_text().count(f'"event": "{event}"')


async def _call(
    http: aiohttp.ClientSession,
    sb: RunningSandbox,
    token: str,
    request_id: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any] | bytes, CIMultiDict[str]]:
    async with http.post(
        f"{sb.url}/v1/dservices/echo/fault",
        data=request_id.encode(),
        headers={"Authorization": f"Bearer {token}", "X-Request-Id": request_id, **(headers or {})},
    ) as response:
        body: dict[str, Any] | bytes
        if response.headers.get("X-CGN-Error"):
            body = await response.json()
        else:
            body = await response.read()
        return response.status, body, CIMultiDict(response.headers)


def test_a_poisoned_answer_is_502_evicts_no_miner_and_replays_nothing(
    sandbox: RunningSandbox,
) -> None:
    async def scenario() -> None:
        failed_before = _node_log_count(sandbox, "dispatch_failed")
        async with aiohttp.ClientSession() as http:
            token = await _demo_token(http, sandbox)
            healthy = [f"healthy-{new_id('r')}" for _ in range(8)]
            poisoned = [f"poison-{new_id('r')}" for _ in range(3)]
            results = await asyncio.gather(
                *(_call(http, sandbox, token, r, {"X-Echo-Hold-Ms": "300"}) for r in healthy),
                *(
                    _call(http, sandbox, token, r, {"X-Echo-Poison": "huge-header"})
                    for r in poisoned
                ),
            )
        for request_id, (status, body, headers) in zip(healthy, results[:8], strict=True):
            assert status == 200
            assert body == request_id.encode()
            assert headers["X-Request-Id"] == request_id
        for status, body, _ in results[8:]:
            assert status == 502
            assert isinstance(body, dict)
            assert body["error"]["reason"] == "DSERVICE_FAILED"
        starts = journal.by_request(_journal_dir(sandbox), "start")
        for request_id in healthy + poisoned:
            assert len(starts[request_id]) == 1, request_id  # each ran exactly once
        assert _node_log_count(sandbox, "dispatch_failed") == failed_before  # nobody evicted

    asyncio.run(scenario())


def test_a_hanging_dservice_is_504_and_its_call_is_cancelled(sandbox: RunningSandbox) -> None:
    async def scenario() -> None:
        request_id = f"hang-{new_id('r')}"
        async with aiohttp.ClientSession() as http:
            token = await _demo_token(http, sandbox)
            started = time.monotonic()
            status, body, headers = await _call(
                http,
                sandbox,
                token,
                request_id,
                {"X-Echo-Hold-Ms": "60000", "X-CGN-Timeout-Ms": "1000"},
            )
            elapsed = time.monotonic() - started
        assert status == 504
        assert isinstance(body, dict)
        assert body["error"]["code"] == "DEADLINE_EXCEEDED"
        assert headers["X-Request-Id"] == request_id
        assert elapsed < 5
        directory = _journal_dir(sandbox)
        await until(
            lambda: request_id in journal.by_request(directory, "aborted"),
            "the DService to see its call aborted",
            timeout_s=5,
        )

    asyncio.run(scenario())


def test_a_dapp_that_goes_away_cancels_its_work(sandbox: RunningSandbox) -> None:
    async def scenario() -> None:
        request_id = f"gone-{new_id('r')}"
        directory = _journal_dir(sandbox)
        async with aiohttp.ClientSession() as http:
            token = await _demo_token(http, sandbox)
            call = asyncio.create_task(
                _call(http, sandbox, token, request_id, {"X-Echo-Hold-Ms": "60000"})
            )
            await until(
                lambda: request_id in journal.by_request(directory, "start"),
                "the DService to start the request",
            )
            call.cancel()  # the DApp disconnects
        gone = time.monotonic()
        await until(
            lambda: request_id in journal.by_request(directory, "aborted"),
            "the DService to see its request aborted",
            timeout_s=5,
        )
        assert time.monotonic() - gone < 5

    asyncio.run(scenario())


def test_a_request_no_miner_may_run_delays_nobody(sandbox: RunningSandbox) -> None:
    async def scenario() -> None:
        admin = _admin(sandbox)
        try:
            other_id, other_key = await admin.create_account(
                AccountKind.ENTERPRISE, "no miners for me", allowed_tiers=[Tier.TIER_3_TEE]
            )
        finally:
            await admin.close()
        async with aiohttp.ClientSession() as http:
            token = await _demo_token(http, sandbox)
            other = await _token(http, sandbox, other_id, other_key)

            async def timed(n: int) -> float:
                started = time.monotonic()
                status, _, _ = await _call(http, sandbox, token, f"hol-{n}-{new_id('r')}")
                assert status == 200
                return time.monotonic() - started

            baseline = [await timed(n) for n in range(50)]
            blocker = asyncio.create_task(_call(http, sandbox, other, f"blocker-{new_id('r')}"))
            times = [await timed(n) for n in range(50)]
            status, body, _ = await blocker
        # 10x the median, with a floor of 0.5 s for a busy machine: a head-of-line block
        # would hold every one of these for the blocker's whole wait (seconds).
        assert max(times) <= max(10 * statistics.median(baseline), 0.5)
        assert status == 503
        assert isinstance(body, dict)
        assert body["error"]["reason"] == "NO_ELIGIBLE_MINER"

    asyncio.run(scenario())
