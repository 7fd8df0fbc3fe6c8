"""The sandbox as a user runs it: start, real requests end to end, a miner killed under load,
SIGTERM, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from pathlib import Path

import aiohttp

from tests.helpers.sandbox import RunningSandbox, alive, start_sandbox, stop_sandbox

BODY = bytes(range(256)) * 64 + b"\r\n\x00end"


async def _session(http: aiohttp.ClientSession, sb: RunningSandbox) -> str:
    async with http.post(
        f"{sb.url}/v1/sessions",
        json={"account_id": sb.info["account_id"], "api_key": sb.info["api_key"]},
    ) as response:
        assert response.status == 200, await response.text()
        data = await response.json()
    assert data["expires_at"].endswith("Z")
    token: str = data["token"]
    return token


async def _echo(http: aiohttp.ClientSession, sb: RunningSandbox, token: str, n: int) -> None:
    body = BODY + str(n).encode()
    async with http.put(
        f"{sb.url}/v1/dservices/echo/items/{n}?q=%20a%2Bb&n={n}",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
    ) as response:
        assert response.status == 200
        assert await response.read() == body


def test_sandbox_round_trip_failover_and_clean_stop(tmp_path: Path) -> None:
    sb = start_sandbox(tmp_path / "state", tmp_path / "sandbox.log")
    try:
        sandbox_json = tmp_path / "state" / "sandbox.json"
        assert stat.S_IMODE(sandbox_json.stat().st_mode) == 0o600
        processes = sb.info["processes"]
        assert {"central", "node", "gateway", "miner-1", "miner-2"} <= set(processes)
        assert all(alive(p["pid"]) for p in processes.values())
        # The demo key is written to sandbox.json and nowhere else in the state directory.
        key = sb.info["api_key"].encode()
        holders = [
            p for p in (tmp_path / "state").rglob("*") if p.is_file() and key in p.read_bytes()
        ]
        assert holders == [sandbox_json]
        pids = sb.pids()
        asyncio.run(_exercise(sb))
    finally:
        code = stop_sandbox(sb.process)
    assert code == 0
    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []


async def _exercise(sb: RunningSandbox) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        token = await _session(http, sb)
        async with http.post(
            f"{sb.url}/v1/dservices/echo/a/b%2Fc/?x=1&y=%20z&x=2",
            data=BODY,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/x-test",
                "X-Custom": "kept",
                "Keep-Alive": "timeout=5",
            },
        ) as response:
            assert response.status == 200
            assert await response.read() == BODY
            assert response.headers["X-Echo-Method"] == "POST"
            assert response.headers["X-Echo-Path"] == "/a/b%2Fc/"
            assert response.headers["X-Echo-Query"] == "x=1&y=%20z&x=2"
            assert response.headers["Content-Type"] == "application/x-test"
            assert "X-CGN-Error" not in response.headers
            seen = response.headers["X-Echo-Header-Names"].split(",")
            assert "x-custom" in seen
            assert "authorization" not in seen
            assert "keep-alive" not in seen

        # Kill one miner while requests are in flight: every request still succeeds.
        requests = [asyncio.create_task(_echo(http, sb, token, n)) for n in range(200)]
        await asyncio.sleep(0)
        os.kill(sb.info["processes"]["miner-1"]["pid"], signal.SIGKILL)
        await asyncio.gather(*requests)
        await asyncio.gather(*(_echo(http, sb, token, n) for n in range(20)))
