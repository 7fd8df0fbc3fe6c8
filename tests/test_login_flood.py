"""Logins that survive a flood: Central, a node and the gateway in this process, a thousand
wrong logins from 127.0.0.2 and a right one from 127.0.0.1 while they run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from cgn_common.certs import Role
from cgn_common.types import AccountKind
from gateway.config import GatewayConfig
from gateway.server import start
from tests.helpers.cluster import start_cluster, stop_cluster
from tests.helpers.pki import Pki
from tests.helpers.wait import until


async def _login(
    http: aiohttp.ClientSession, url: str, account: str, key: str
) -> tuple[int, dict[str, str]]:
    async with http.post(
        f"{url}/v1/sessions", json={"account_id": account, "api_key": key}
    ) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_a_right_login_stays_fast_during_a_flood_of_wrong_ones(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "ca")
    cluster = await start_cluster(tmp_path, pki, central_timeout_s=30)
    link = pki.issue(Role.GATEWAY, "gw")
    runner, node_client, url = await start(
        GatewayConfig(
            listen="127.0.0.1:0",
            node_address=cluster.endpoints["internal"],
            tls_cert_file=link.cert_file,
            tls_key_file=link.key_file,
            tls_ca_file=link.ca_file,
        )
    )
    accounts = cluster.central.accounts
    try:
        await until(lambda: cluster.node.central.connected, "the central link")
        victim = await accounts.create(AccountKind.ENTERPRISE, "victim")
        account_id = victim.account.account_id
        # The same right login with no flood, on this machine now: the bound below is 1 s
        # (the issue's), or four times this when a busy machine makes even that slower. A
        # login queued behind the flood's Argon2 runs would take tens of seconds either way.
        async with aiohttp.ClientSession() as http:
            await _login(http, url, account_id, victim.api_key)  # warm the path
            started = time.monotonic()
            await _login(http, url, account_id, victim.api_key)
            quiet_login_s = time.monotonic() - started
        checks_before = accounts.hash_checks
        statuses: list[int] = []
        retry_after: set[str] = set()
        attacker = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=64)
        async with aiohttp.ClientSession(connector=attacker) as flood_http:

            async def attack(n: int) -> None:
                status, headers = await _login(flood_http, url, account_id, f"wrong-{n}")
                statuses.append(status)
                if status == 429:
                    retry_after.add(headers.get("Retry-After", ""))

            flood = asyncio.gather(*(attack(n) for n in range(1000)))
            await until(lambda: len(statuses) >= 50, "the flood to be under way")
            async with aiohttp.ClientSession() as http:
                started = time.monotonic()
                status, _ = await _login(http, url, account_id, victim.api_key)
                right_login_s = time.monotonic() - started
            still_flooding = len(statuses) < 1000
            await flood
        assert status == 200
        assert right_login_s < max(1.0, 4 * quiet_login_s), (right_login_s, quiet_login_s)
        assert still_flooding
        assert statuses.count(429) > 900
        assert "" not in retry_after
        assert set(statuses) <= {401, 429}
        argon2_runs = accounts.hash_checks - checks_before
        assert argon2_runs < 100, argon2_runs  # far fewer than 1,000
        print(
            f"flood: right login in {right_login_s * 1000:.0f} ms "
            f"({quiet_login_s * 1000:.0f} ms without the flood); "
            f"{statuses.count(429)} x 429, {statuses.count(401)} x 401; "
            f"Argon2 ran {argon2_runs} times for 1001 logins"
        )
    finally:
        await runner.cleanup()
        await node_client.close()
        await stop_cluster(cluster)
