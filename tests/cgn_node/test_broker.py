"""Broker behaviour with scripted miners (the broker is transport-agnostic; the real
stream is exercised end to end in tests/test_sandbox.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cgn_common.errors import NotFoundError, ResourceExhaustedError, UnavailableError
from cgn_common.types import Tier
from cgn_node.broker import Broker, MinerFailedError, WorkUnit

ENTERPRISE = "acct_enterprise"


class ScriptedMiner:
    """A MinerHandle whose runs succeed, fail, or wait on an event."""

    def __init__(
        self,
        miner_id: str,
        tier: Tier = Tier.TIER_2_DATACENTER,
        *,
        owner: str = "",
        fail: bool = False,
        capacity: int = 1,
    ) -> None:
        self.miner_id = miner_id
        self.tier = tier
        self.owner_account_id = owner
        self.dservices = frozenset({"echo"})
        self.capacity = capacity
        self.fail = fail
        self.release = asyncio.Event()
        self.release.set()
        self.ran: list[str] = []
        self.closed = ""

    async def run(self, unit: WorkUnit) -> Any:
        self.ran.append(unit.work_id)
        await self.release.wait()
        if self.fail:
            raise MinerFailedError("miner died")
        return f"{self.miner_id}:{unit.work_id}"

    def close(self, reason: str) -> None:
        self.closed = reason


def _unit(work_id: str, tiers: tuple[Tier, ...] = (Tier.TIER_2_DATACENTER,)) -> WorkUnit:
    return WorkUnit(work_id, "echo", ENTERPRISE, tiers, payload=None)


async def test_failed_dispatch_goes_to_another_miner_without_error() -> None:
    broker = Broker()
    bad, good = ScriptedMiner("bad", fail=True), ScriptedMiner("good")
    broker.add_miner(bad)
    broker.add_miner(good)
    outcomes = await asyncio.gather(*(broker.submit(_unit(f"w{i}")) for i in range(4)))
    assert all(o.miner_id == "good" for o in outcomes)
    assert bad.closed == "miner died"
    assert max(o.attempts for o in outcomes) == 2


async def test_redispatched_work_goes_to_the_head_of_the_queue() -> None:
    broker = Broker()
    flaky = ScriptedMiner("flaky", fail=True)
    flaky.release.clear()
    broker.add_miner(flaky)
    first = asyncio.create_task(broker.submit(_unit("first")))
    await asyncio.sleep(0)
    second = asyncio.create_task(broker.submit(_unit("second")))
    await asyncio.sleep(0)
    flaky.release.set()  # "first" fails and must be queued ahead of "second"
    await asyncio.sleep(0)
    steady = ScriptedMiner("steady")
    broker.add_miner(steady)
    await asyncio.gather(first, second)
    assert steady.ran == ["first", "second"]


async def test_tier_one_miners_run_only_their_owners_work() -> None:
    broker = Broker(queue_timeout_s=0.2)
    broker.add_miner(ScriptedMiner("private", Tier.TIER_1_PRIVATE, owner="acct_other"))
    with pytest.raises(UnavailableError):
        await broker.submit(_unit("w", (Tier.TIER_1_PRIVATE,)))
    broker.add_miner(ScriptedMiner("mine", Tier.TIER_1_PRIVATE, owner=ENTERPRISE))
    outcome = await broker.submit(_unit("w2", (Tier.TIER_1_PRIVATE,)))
    assert outcome.miner_id == "mine"


async def test_disallowed_tier_is_never_used() -> None:
    broker = Broker(queue_timeout_s=0.2)
    broker.add_miner(ScriptedMiner("untrusted", Tier.TIER_4B_ANONYMOUS))
    with pytest.raises(UnavailableError):
        await broker.submit(_unit("w", (Tier.TIER_1_PRIVATE, Tier.TIER_2_DATACENTER)))


async def test_unknown_dservice_and_overload_are_refused_at_once() -> None:
    broker = Broker(danger_threshold=1)
    with pytest.raises(NotFoundError):
        await broker.submit(WorkUnit("w", "nope", ENTERPRISE, (Tier.TIER_2_DATACENTER,), None))
    busy = ScriptedMiner("busy")
    busy.release.clear()
    broker.add_miner(busy)
    running = asyncio.create_task(broker.submit(_unit("running")))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(broker.submit(_unit("waiting")))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhaustedError):
        await broker.submit(_unit("refused"))
    busy.release.set()
    await asyncio.gather(running, waiting)


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    broker = Broker()
    miner = ScriptedMiner("m")
    miner.release.clear()
    broker.add_miner(miner)
    running = asyncio.create_task(broker.submit(_unit("running")))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(broker.submit(_unit("gone")))
    await asyncio.sleep(0)
    waiting.cancel()
    miner.release.set()
    await running
    outcome = await asyncio.wait_for(broker.submit(_unit("next")), 5)
    assert outcome.miner_id == "m"
    assert "gone" not in miner.ran
