"""Broker behaviour with scripted miners (the broker is transport-agnostic; the real stream
is exercised in tests/cgn_node/test_miner_link.py and end to end in the sandbox tests).
Steps are ordered with events and the broker's own counters, never sleep(0) counts."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial

import pytest

from cgn_common.errors import (
    AccountLimitError,
    DeadlineExceededError,
    DServiceFailedError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from cgn_common.types import Tier
from cgn_node.broker import Broker, MinerFailedError, MinerRefusedError
from cgn_node.work import HttpRequest, Usage, WorkResult, WorkUnit
from tests.helpers.wait import until

ENTERPRISE = "acct_enterprise"
REQUEST = HttpRequest("GET", "/", "", (), b"")


class ScriptedMiner:
    """A MinerHandle whose runs succeed, fail, refuse, or wait on an event."""

    def __init__(
        self,
        miner_id: str,
        tier: Tier = Tier.TIER_2_DATACENTER,
        *,
        owner: str = "",
        capacity: int = 1,
        fail: Callable[[str], Exception] | None = None,
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
        self.started: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.closed = ""

    async def run(self, unit: WorkUnit) -> WorkResult:
        self.ran.append(unit.work_id)
        self.started[unit.work_id].set()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail(f"{self.miner_id} scripted failure")
        return WorkResult(200, (), self.miner_id.encode(), Usage())

    def close(self, reason: str) -> None:
        self.closed = reason


def _unit(
    work_id: str,
    tiers: tuple[Tier, ...] = (Tier.TIER_2_DATACENTER,),
    *,
    account: str = ENTERPRISE,
    deadline_s: float = math.inf,
    affinity: str = "",
) -> WorkUnit:
    return WorkUnit(
        work_id,
        "echo",
        account,
        tiers,
        REQUEST,
        affinity_key=affinity,
        deadline=time.monotonic() + deadline_s,
    )


def _waiting(broker: Broker) -> int:
    return broker.queue_depths().get("echo", (0, 0))[0]


async def test_failed_dispatch_goes_to_another_miner_without_error() -> None:
    broker = Broker()
    bad, good = ScriptedMiner("bad", fail=MinerFailedError), ScriptedMiner("good")
    broker.add_miner(bad)
    broker.add_miner(good)
    outcomes = await asyncio.gather(*(broker.submit(_unit(f"w{i}")) for i in range(4)))
    assert all(o.miner_id == "good" for o in outcomes)
    assert bad.closed == "bad scripted failure"
    assert bad not in broker.miners()
    assert broker.redispatches >= 1
    assert max(o.attempts for o in outcomes) == 2


async def test_redispatched_work_goes_to_the_head_of_the_queue() -> None:
    broker = Broker()
    flaky = ScriptedMiner("flaky", fail=MinerFailedError)
    flaky.release.clear()
    broker.add_miner(flaky)
    first = asyncio.create_task(broker.submit(_unit("first")))
    await flaky.started["first"].wait()
    second = asyncio.create_task(broker.submit(_unit("second")))
    await until(lambda: _waiting(broker) == 1, "second to wait")
    flaky.release.set()  # "first" fails and must be queued ahead of "second"
    await until(lambda: _waiting(broker) == 2, "first to be queued again")
    steady = ScriptedMiner("steady")
    broker.add_miner(steady)
    await asyncio.gather(first, second)
    assert steady.ran == ["first", "second"]


async def test_a_request_no_miner_may_run_never_delays_the_others() -> None:
    broker = Broker(appear_grace_s=30)
    for n in range(2):
        broker.add_miner(ScriptedMiner(f"m{n}", capacity=4))

    async def timed(unit: WorkUnit) -> float:
        started = time.monotonic()
        await broker.submit(unit)
        return time.monotonic() - started

    baseline = await asyncio.gather(*(timed(_unit(f"a{i}")) for i in range(50)))
    blocker = asyncio.create_task(broker.submit(_unit("blocker", (Tier.TIER_3_TEE,))))
    await until(lambda: _waiting(broker) == 1, "the blocker to wait")
    times = await asyncio.gather(*(timed(_unit(f"b{i}")) for i in range(50)))
    assert max(times) <= 10 * max(statistics.median(baseline), 0.001)
    assert not blocker.done()
    blocker.cancel()


async def test_tier_one_miners_run_only_their_owners_work() -> None:
    broker = Broker(appear_grace_s=0.05)
    broker.add_miner(ScriptedMiner("private", Tier.TIER_1_PRIVATE, owner="acct_other"))
    with pytest.raises(UnavailableError) as refused:
        await broker.submit(_unit("w", (Tier.TIER_1_PRIVATE,)))
    assert refused.value.reason == "NO_ELIGIBLE_MINER"
    broker.add_miner(ScriptedMiner("mine", Tier.TIER_1_PRIVATE, owner=ENTERPRISE))
    outcome = await broker.submit(_unit("w2", (Tier.TIER_1_PRIVATE,)))
    assert outcome.miner_id == "mine"


async def test_no_eligible_miner_waits_only_the_grace_and_a_miner_that_appears_serves() -> None:
    broker = Broker(appear_grace_s=0.05)
    broker.add_miner(ScriptedMiner("untrusted", Tier.TIER_4B_ANONYMOUS))
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="no connected miner may run"):
        await broker.submit(_unit("w", (Tier.TIER_1_PRIVATE, Tier.TIER_2_DATACENTER)))
    assert time.monotonic() - started < 5
    late = Broker(appear_grace_s=30, static_dservices=["echo"])
    waiting = asyncio.create_task(late.submit(_unit("w")))
    await until(lambda: _waiting(late) == 1, "the unit to wait")
    late.add_miner(ScriptedMiner("arrived"))
    assert (await waiting).miner_id == "arrived"


async def test_a_deadline_passed_in_the_queue_is_deadline_exceeded() -> None:
    broker = Broker()
    busy = ScriptedMiner("busy")
    busy.release.clear()
    broker.add_miner(busy)
    running = asyncio.create_task(broker.submit(_unit("running")))
    await busy.started["running"].wait()
    with pytest.raises(DeadlineExceededError):
        await broker.submit(_unit("late", deadline_s=0.05))
    busy.release.set()
    await running


async def test_unknown_dservice_and_overload_are_refused_at_once() -> None:
    broker = Broker(danger_threshold=1)
    with pytest.raises(NotFoundError):
        await broker.submit(WorkUnit("w", "nope", ENTERPRISE, (Tier.TIER_2_DATACENTER,), REQUEST))
    busy = ScriptedMiner("busy")
    busy.release.clear()
    broker.add_miner(busy)
    running = asyncio.create_task(broker.submit(_unit("running")))
    await busy.started["running"].wait()
    waiting = asyncio.create_task(broker.submit(_unit("waiting")))
    await until(lambda: _waiting(broker) == 1, "one unit to wait")
    with pytest.raises(ResourceExhaustedError) as refused:
        await broker.submit(_unit("refused"))
    assert not isinstance(refused.value, AccountLimitError)
    busy.release.set()
    await asyncio.gather(running, waiting)


async def test_one_account_past_its_limit_is_refused_while_another_is_served() -> None:
    broker = Broker(account_limit=2)
    slow = ScriptedMiner("slow", capacity=2)
    slow.release.clear()
    broker.add_miner(slow)
    held = [asyncio.create_task(broker.submit(_unit(f"h{i}"))) for i in range(2)]
    await until(lambda: len(slow.ran) == 2, "two units running")
    with pytest.raises(AccountLimitError):
        await broker.submit(_unit("over"))
    other = asyncio.create_task(broker.submit(_unit("other", account="acct_other")))
    broker.add_miner(ScriptedMiner("fresh"))
    assert (await other).miner_id == "fresh"
    slow.release.set()
    await asyncio.gather(*held)


async def test_a_refusing_miner_stays_and_the_unit_goes_elsewhere() -> None:
    broker = Broker()
    picky = ScriptedMiner("picky", fail=MinerRefusedError)
    broker.add_miner(picky)
    unit = asyncio.create_task(broker.submit(_unit("w")))
    await picky.started["w"].wait()
    broker.add_miner(ScriptedMiner("willing"))
    outcome = await unit
    assert outcome.miner_id == "willing"
    assert picky in broker.miners()
    assert not picky.closed


async def test_a_miner_without_a_free_slot_gets_the_unit_once_it_says_it_has_one() -> None:
    """A NACK for want of a free slot (RESOURCE_EXHAUSTED: the miner's count and the node's
    crossed) passes: the miner gets no work until its next WorkSlots, then the unit runs there.
    Such a NACK once barred the miner from the unit for good, and a unit so refused by every
    miner waited for its deadline (a 504)."""
    broker = Broker()
    full = ScriptedMiner("full", capacity=2, fail=partial(MinerRefusedError, busy=True))
    broker.add_miner(full)
    unit = asyncio.create_task(broker.submit(_unit("w")))
    await until(lambda: _waiting(broker) == 1, "the refused unit to wait")
    assert full.ran == ["w"]  # not offered again at once: the miner said it is full
    full.fail = None
    broker.set_free(full, 1)  # its next WorkSlots
    outcome = await asyncio.wait_for(unit, 5)
    assert (outcome.miner_id, outcome.attempts) == ("full", 2)
    assert full.ran == ["w", "w"]


async def test_a_dservice_failure_is_the_answer_and_the_miner_stays() -> None:
    broker = Broker()
    miner = ScriptedMiner("m", fail=DServiceFailedError)
    broker.add_miner(miner)
    with pytest.raises(DServiceFailedError):
        await broker.submit(_unit("poison"))
    assert miner.ran == ["poison"]  # not replayed
    assert miner in broker.miners()
    assert broker.redispatches == 0


async def test_the_retry_budget_runs_out_as_a_clear_error() -> None:
    broker = Broker(dispatch_attempts=2, appear_grace_s=5)
    for n in range(3):
        broker.add_miner(ScriptedMiner(f"dying{n}", fail=MinerFailedError))
    with pytest.raises(UnavailableError) as failed:
        await broker.submit(_unit("w"))
    assert failed.value.reason == "RETRY_BUDGET_EXHAUSTED"


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    broker = Broker()
    miner = ScriptedMiner("m")
    miner.release.clear()
    broker.add_miner(miner)
    running = asyncio.create_task(broker.submit(_unit("running")))
    await miner.started["running"].wait()
    waiting = asyncio.create_task(broker.submit(_unit("gone")))
    await until(lambda: _waiting(broker) == 1, "the second unit to wait")
    waiting.cancel()
    await until(lambda: _waiting(broker) == 0, "the cancelled unit to leave")
    miner.release.set()
    await running
    outcome = await asyncio.wait_for(broker.submit(_unit("next")), 5)
    assert outcome.miner_id == "m"
    assert "gone" not in miner.ran


async def test_affinity_keeps_a_key_on_its_miner_and_falls_back_when_it_leaves() -> None:
    broker = Broker(affinity_entries=2)
    a, b = ScriptedMiner("a", capacity=8), ScriptedMiner("b", capacity=8)
    broker.add_miner(a)
    broker.add_miner(b)
    first = await broker.submit(_unit("k1", affinity="key"))
    for i in range(5):
        again = await broker.submit(_unit(f"k1-{i}", affinity="key"))
        assert again.miner_id == first.miner_id
    broker.remove_miner(a if first.miner_id == "a" else b)
    moved = await broker.submit(_unit("k1-moved", affinity="key"))
    assert moved.miner_id != first.miner_id
    for key in ("x", "y", "z"):  # the table keeps at most 2 keys
        await broker.submit(_unit(f"fill-{key}", affinity=key))
    assert len(broker._affinity) == 2


async def test_work_slots_bound_what_the_broker_pushes() -> None:
    broker = Broker()
    miner = ScriptedMiner("m", capacity=2)
    miner.release.clear()
    broker.add_miner(miner)
    broker.set_free(miner, 1)  # the miner says only one more fits
    first = asyncio.create_task(broker.submit(_unit("first")))
    await miner.started["first"].wait()
    second = asyncio.create_task(broker.submit(_unit("second")))
    await until(lambda: _waiting(broker) == 1, "the second unit to wait")
    broker.hold_slot(miner)  # a unit given up on may still run: nothing more fits
    broker.set_free(miner, 1)  # the miner's next WorkSlots: one fits again
    await miner.started["second"].wait()
    miner.release.set()
    await asyncio.gather(first, second)
    assert miner.ran == ["first", "second"]
