"""Session revocation across a two-node sandbox: an operator's revocation reaches every node
process within the documented bound (docs/security.md), a node restarted after it or down
while it happened still refuses the token, and a logout ends one session everywhere. Then
every file the run produced is searched for every secret it created."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cgn_cli._admin import AdminClient
from cgn_cli.sandbox import OPERATOR
from cgn_common.rpc import open_channel
from cgn_common.types import AccountKind
from generated.cgn.admin.v1 import account_admin_service_pb2 as acct_pb
from generated.cgn.admin.v1 import account_admin_service_pb2_grpc as acct_grpc
from tests.helpers.sandbox import RunningSandbox, alive, start_sandbox, stop_sandbox

#: The documented bound: a revocation reaches every linked node process within this.
REVOCATION_BOUND_S = 5.0

#: Every credential this module's run created or sent, for the final search.
SECRETS: set[str] = set()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    base: Path = tmp_path_factory.mktemp("two-nodes")
    running = start_sandbox(
        base / "state", base / "sandbox.log", nodes=2, miners=2, dservices="echo"
    )
    try:
        yield running
    finally:
        stop_sandbox(running.process)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _admin(sb: RunningSandbox) -> AdminClient:
    return AdminClient(sb.info["processes"]["central"]["endpoints"]["admin"], sb.tls(OPERATOR))


def _urls(sb: RunningSandbox) -> list[str]:
    return [node["gateway_url"] for node in sb.info["nodes"]]


async def _login(http: aiohttp.ClientSession, url: str, sb: RunningSandbox) -> str:
    async with http.post(
        f"{url}/v1/sessions",
        json={"account_id": sb.info["account_id"], "api_key": sb.info["api_key"]},
    ) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["token"]
    SECRETS.add(token)
    return token


async def _call(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str]:
    """(status, ErrorInfo reason or "") of one echo call."""
    async with http.post(
        f"{url}/v1/dservices/echo/revocation",
        data=b"ping",
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        if response.headers.get("X-CGN-Error"):
            return response.status, (await response.json())["error"].get("reason", "")
        await response.read()
        return response.status, ""


async def _until_status(
    http: aiohttp.ClientSession, url: str, token: str, status: int, timeout_s: float
) -> float:
    """Calls until one answers ``status``; returns the seconds it took."""
    began = time.monotonic()
    while (answer := await _call(http, url, token))[0] != status:
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"still {answer} after {timeout_s} s, wanted {status}")
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def _restart_node(sb: RunningSandbox, name: str) -> None:
    """kill -9 the node process ``name`` and waits for the sandbox to start it again."""
    pid = int(sb.current()["processes"][name]["pid"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while sb.current()["processes"][name]["pid"] == pid or alive(pid):
        assert time.monotonic() < deadline, f"{name} was not restarted"
        await asyncio.sleep(0.05)


async def _until_login(http: aiohttp.ClientSession, url: str, sb: RunningSandbox) -> str:
    """Logs in once the (restarted) node serves logins again."""
    deadline = time.monotonic() + 60
    while True:
        async with http.post(
            f"{url}/v1/sessions",
            json={"account_id": sb.info["account_id"], "api_key": sb.info["api_key"]},
        ) as response:
            if response.status == 200:
                token: str = (await response.json())["token"]
                SECRETS.add(token)
                return token
        assert time.monotonic() < deadline, "the restarted node never served a login"
        await asyncio.sleep(0.05)


async def test_a_revoked_account_is_refused_by_every_node_even_one_restarted_after(
    two_nodes: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sb = two_nodes
    urls = _urls(sb)
    assert len(urls) == 2
    tokens = [await _login(http, url, sb) for url in urls]
    for url, token in zip(urls, tokens, strict=True):
        assert await _call(http, url, token) == (200, "")
    admin = _admin(sb)
    try:
        epoch, told = await admin.revoke_account_sessions(sb.info["account_id"])
    finally:
        await admin.close()
    assert told == 2
    assert epoch >= 1
    for url, token in zip(urls, tokens, strict=True):
        took = await _until_status(http, url, token, 401, REVOCATION_BOUND_S)
        assert took < REVOCATION_BOUND_S
        assert await _call(http, url, token) == (401, "SESSION_INVALID")
    # A token issued after the revocation proves the restarted node kept its session key:
    # it refuses the old token because of the revocation, not because every token died.
    fresh = await _login(http, urls[1], sb)
    await _restart_node(sb, "node-2")
    await _until_status(http, urls[1], fresh, 200, 60)
    assert await _call(http, urls[1], tokens[1]) == (401, "SESSION_INVALID")
    assert await _call(http, urls[0], tokens[0]) == (401, "SESSION_INVALID")


async def test_a_node_down_during_the_revocation_learns_it_when_it_returns(
    two_nodes: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sb = two_nodes
    url = _urls(sb)[1]
    token = await _login(http, url, sb)
    assert await _call(http, url, token) == (200, "")
    pid = int(sb.current()["processes"]["node-2"]["pid"])
    os.kill(pid, signal.SIGSTOP)  # the node hears nothing; the directive dies with it
    try:
        admin = _admin(sb)
        try:
            await admin.revoke_account_sessions(sb.info["account_id"])
        finally:
            await admin.close()
    finally:
        await _restart_node(sb, "node-2")
    fresh = await _until_login(http, url, sb)
    await _until_status(http, url, fresh, 200, 60)
    assert await _call(http, url, token) == (401, "SESSION_INVALID")
    logs = (sb.state_dir / "logs" / "node-2.log").read_text()
    assert '"event": "revocations_synced", "accounts": 1' in logs


async def test_a_logout_ends_that_session_on_every_node_process_and_no_other(
    two_nodes: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sb = two_nodes
    first, second = _urls(sb)
    leaving, staying = await _login(http, first, sb), await _login(http, first, sb)
    elsewhere = await _login(http, second, sb)

    async def logout(token: str) -> int:
        async with http.delete(
            f"{first}/v1/sessions", headers={"Authorization": f"bearer {token}"}
        ) as response:
            await response.read()
            return response.status

    assert await logout(leaving) == 200
    assert await _call(http, first, leaving) == (401, "SESSION_INVALID")
    assert await logout(leaving) == 401  # once is enough; the token is no credential now
    assert await _call(http, first, staying) == (200, "")
    assert await _call(http, second, elsewhere) == (200, "")
    await _restart_node(sb, "node")
    await _until_status(http, first, staying, 200, 60)
    assert await _call(http, first, leaving) == (401, "SESSION_INVALID")


async def test_no_secret_of_the_run_is_in_any_file_but_sandbox_json_and_key_files(
    two_nodes: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sb = two_nodes
    # A fresh account's key and password, a right login and a wrong one (a wrong key is often
    # a mistyped right one, so it is a secret too).
    admin_address = sb.info["processes"]["central"]["endpoints"]["admin"]
    async with open_channel(admin_address, sb.tls(OPERATOR)) as channel:
        created = await acct_grpc.AccountAdminServiceStub(channel).CreateAccount(
            acct_pb.CreateAccountRequest(
                kind=int(AccountKind.ENTERPRISE),  # type: ignore[arg-type]
                display_name="grep",
            ),
            timeout=30,
        )
    account_id = created.account.account_id
    SECRETS.update({created.api_key, created.password, sb.info["api_key"]})
    wrong = created.api_key[:-4] + "wxyz"
    SECRETS.add(wrong)
    url = _urls(sb)[0]
    for key in (wrong, created.api_key):
        async with http.post(
            f"{url}/v1/sessions", json={"account_id": account_id, "api_key": key}
        ) as response:
            body = await response.text()
            assert key not in body
            if response.status == 200:
                SECRETS.add((await response.json())["token"])
    async with http.post(
        f"{url}/v1/dservices/echo/secret",
        data=b"x",
        headers={"Authorization": f"Bearer {sorted(SECRETS)[0]}x", "Cookie": "a=1"},
    ) as response:
        assert sorted(SECRETS)[0] not in await response.text()

    binary_needles: set[bytes] = set()
    key_files = list(sb.state_dir.rglob("*.key"))
    assert len(key_files) >= 2 + 2 + 4  # miner keys, session keys, TLS keys
    for path in key_files:
        raw = path.read_bytes()
        if raw.startswith(b"-----BEGIN"):
            # The private scalar, raw and in hex, and the first two lines of the PEM body,
            # which hold it (later lines hold the public key, which certificates carry too).
            key = serialization.load_pem_private_key(raw, password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            scalar = key.private_numbers().private_value.to_bytes(32, "big")
            binary_needles.add(scalar)
            SECRETS.add(scalar.hex())
            SECRETS.update(raw.decode().splitlines()[1:3])
        else:
            binary_needles.add(raw)
            SECRETS.add(raw.hex())
            if raw.isascii():
                SECRETS.add(raw.decode().strip())
    needles = {s.encode() for s in SECRETS if len(s) >= 16} | binary_needles
    # Tokens are also looked for by their signature, the part no one else can make.
    needles |= {s.rsplit(".", 1)[1].encode() for s in SECRETS if s.count(".") == 1}
    searched = 0
    for path in [*sb.state_dir.rglob("*"), sb.state_dir.parent / "sandbox.log"]:
        if not path.is_file() or path.suffix == ".key" or path.name == "sandbox.json":
            continue
        data = path.read_bytes()
        searched += 1
        found = [n[:12] for n in needles if n in data]
        assert not found, f"{path} holds secrets starting {found}"
    assert searched >= 15  # logs of 7 processes, Central's database and WAL, state, certs
