"""The work path under load and faults, each in a sandbox of its own: overload answers at
once, and a fleet losing a miner every half second loses no request."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from cgn_common.ids import new_id
from cgn_common.rpc import open_channel
from cgn_common.types import AccountKind
from generated.cgn.node.v1 import status_service_pb2 as status_pb
from generated.cgn.node.v1 import status_service_pb2_grpc as status_grpc
from tests.helpers import journal
from tests.helpers.sandbox import RunningSandbox, start_sandbox, stop_sandbox
from tests.helpers.wait import until
from tests.test_work_faults import _admin, _call, _demo_token, _token


def _sandbox(
    tmp_path: Path, miners: int, env: dict[str, str], miner_tier: int = 1
) -> RunningSandbox:
    return start_sandbox(
        tmp_path / "state",
        tmp_path / "sandbox.log",
        miners=miners,
        miner_tier=miner_tier,
        dservices="echo",
        env=env,
    )


def test_overload_is_503_at_once_and_an_account_limit_429_spares_the_others(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "journal"
    directory.mkdir()
    sb = _sandbox(
        tmp_path,
        2,
        {
            "CGN_DSERVICE_ECHO_JOURNAL": str(directory),
            "CGN_MINER_MAX_CONCURRENT_WORK_UNITS": "2",
            "CGN_NODE_ACCOUNT_LIMIT": "3",
            "CGN_NODE_QUEUE_DANGER_THRESHOLD": "2",
        },
        miner_tier=2,  # data-centre miners, so other accounts may use them too
    )
    hold = {"X-Echo-Hold-Ms": "8000"}

    async def scenario() -> None:
        admin = _admin(sb)
        try:
            b = await admin.create_account(AccountKind.ENTERPRISE, "b")
            c = await admin.create_account(AccountKind.ENTERPRISE, "c")
        finally:
            await admin.close()
        async with aiohttp.ClientSession() as http:
            a_token = await _demo_token(http, sb)
            b_token, c_token = [await _token(http, sb, *acct) for acct in (b, c)]
            held = [
                asyncio.create_task(_call(http, sb, a_token, f"a{i}-{new_id('r')}", hold))
                for i in range(3)
            ]
            await _until_started(sb, 3)
            started = time.monotonic()
            status, body, headers = await _call(http, sb, a_token, f"a-over-{new_id('r')}")
            assert status == 429
            assert headers["Retry-After"]
            assert time.monotonic() - started < 1
            assert isinstance(body, dict)
            assert body["error"]["reason"] == "ACCOUNT_IN_FLIGHT_LIMIT"
            status, _, _ = await _call(http, sb, b_token, f"b-served-{new_id('r')}")
            assert status == 200  # another account is still served
            held.append(asyncio.create_task(_call(http, sb, b_token, f"b-h-{new_id('r')}", hold)))
            await _until_started(sb, 4 + 1)  # every slot stalled (+1: b-served)
            queued = [
                asyncio.create_task(_call(http, sb, b_token, f"b-q{i}-{new_id('r')}", hold))
                for i in range(2)
            ]
            await _until_waiting(sb, 2)
            started = time.monotonic()
            status, body, headers = await _call(http, sb, c_token, f"c-{new_id('r')}")
            overload_s = time.monotonic() - started
            assert status == 503
            assert headers["Retry-After"]
            assert overload_s < 1, overload_s
            print(f"overload: 503 in {overload_s * 1000:.0f} ms")
            for task in held + queued:
                task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        stop_sandbox(sb.process)


async def _until_started(sb: RunningSandbox, n: int) -> None:
    directory = sb.state_dir.parent / "journal"
    await until(
        lambda: sum(len(v) for v in journal.by_request(directory, "start").values()) >= n,
        f"{n} requests to start",
    )


async def _node_status(sb: RunningSandbox) -> Any:
    """The node's NodeStatus, from its public status port."""
    status_address = sb.info["processes"]["node"]["endpoints"]["status"]
    async with open_channel(status_address, sb.tls()) as channel:
        stub = status_grpc.NodeStatusServiceStub(channel)
        return (await stub.GetStatus(status_pb.GetStatusRequest(), timeout=5)).status


async def _connected_miners(sb: RunningSandbox) -> int:
    status = await _node_status(sb)
    return sum(p.connected for p in status.miner_pools if p.dservice == "echo")


async def _until_waiting(sb: RunningSandbox, n: int) -> None:
    deadline = time.monotonic() + 15
    while sum(q.depth for q in (await _node_status(sb)).queues) < n:
        assert time.monotonic() < deadline, f"{n} requests did not queue"
        await asyncio.sleep(0.01)


def test_chaos_every_request_answered_once_while_miners_die(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    directory.mkdir()
    sb = _sandbox(tmp_path, 6, {"CGN_DSERVICE_ECHO_JOURNAL": str(directory)})
    requests, concurrency = 2000, 32
    killed: set[int] = set()
    statuses: list[int] = []
    rng = random.Random(7)

    async def scenario() -> None:
        stop = asyncio.Event()

        async def killer() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.5)
                # A restarted miner needs seconds to come back on a busy 2-core machine: never
                # kill the last two connected ones, or the fleet drains faster than it heals.
                if await _connected_miners(sb) <= 2:
                    continue
                processes = sb.current()["processes"]
                miners = [p["pid"] for name, p in processes.items() if name.startswith("miner-")]
                victim = rng.choice([pid for pid in miners if pid not in killed] or miners)
                killed.add(victim)
                os.kill(victim, signal.SIGKILL)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
            token = await _demo_token(http, sb)
            queue: asyncio.Queue[str] = asyncio.Queue()
            for n in range(requests):
                queue.put_nowait(f"chaos-{n}-{new_id('r')}")

            async def client() -> None:
                while not queue.empty():
                    request_id = queue.get_nowait()
                    hold = {"X-Echo-Hold-Ms": str(rng.randint(20, 50))}
                    status, body, _ = await _call(http, sb, token, request_id, hold)
                    statuses.append(status)
                    assert status == 200, (status, body)
                    assert body == request_id.encode()

            kill = asyncio.create_task(killer())
            try:
                await asyncio.gather(*(client() for _ in range(concurrency)))
            finally:
                stop.set()
                kill.cancel()

    started = time.monotonic()
    try:
        asyncio.run(scenario())
    finally:
        stop_sandbox(sb.process)
    elapsed = time.monotonic() - started
    assert len(statuses) == requests
    assert set(statuses) == {200}
    starts = journal.by_request(directory, "start")
    done = journal.by_request(directory, "done")
    chaos = {r for r in starts if r.startswith("chaos-")}
    assert len(chaos) == requests
    assert all(r in done for r in chaos)
    redispatched = {r for r in chaos if len(starts[r]) > 1}
    assert redispatched, "no request was re-dispatched: the chaos did not bite"
    for request_id in redispatched:
        runs: list[dict[str, Any]] = sorted(starts[request_id], key=lambda e: int(e["attempt"]))
        # Every run but the last was on a miner that was killed.
        assert all(run["miner_pid"] in killed for run in runs[:-1]), (request_id, runs, killed)
    print(
        f"chaos: {requests} requests in {elapsed:.1f} s, {len(killed)} miners killed, "
        f"{len(redispatched)} requests re-dispatched"
    )
