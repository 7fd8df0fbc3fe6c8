"""The work broker (SPEC section 4, the paper's WORK BROKER).

Three properties hold whatever is waiting:

* a request goes to any free miner allowed to run it at once;
* a request that no connected miner may run never delays one that can: work waits in one
  FCFS queue per *pool* (DService, tier, and for tier 1 the owning account), so a blocked
  request sits only in the queues of pools that could take it;
* dispatch cost does not grow with the number of miners or of waiting requests: each pool
  keeps an index of its miners with free capacity, and a freed miner looks only at the heads
  of its own pools' queues.

A request whose pools have no connected miner waits only ``appear_grace_s`` for one to
connect (a miner restarting, a node starting), then fails with 503 naming why; otherwise it
waits until its deadline (504). Past a DService's danger threshold new work is refused at once
(503); one account may have at most ``account_limit`` units waiting or running (429).

Blame: a miner that fails (dead, silent, unreachable) is dropped and the work goes back to the
*head* of its queues; a miner that refuses a unit keeps its place and the unit goes elsewhere
(a miner that refused only for want of a free slot may take it later, once its WorkSlots say
it has one); a DService's failure is the DApp's answer (502) and nothing is replayed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from cgn_common.errors import (
    AccountLimitError,
    CgnError,
    DeadlineExceededError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from cgn_common.logs import log_event
from cgn_common.types import Tier
from cgn_node.limits import DServiceLimits
from cgn_node.work import WorkResult, WorkUnit

_log = logging.getLogger(__name__)


class MinerFailedError(Exception):
    """The miner could not finish the work (dead, silent, unreachable): it is dropped and the
    work is re-dispatched elsewhere."""


class MinerRefusedError(Exception):
    """The miner declined the unit in its ack: the unit goes elsewhere, the miner stays.

    ``busy``: it declined because it has no free slot now (a RESOURCE_EXHAUSTED NACK; its
    count and the node's crossed). That passes: the miner may still run the unit later, but
    gets no work until its next WorkSlots."""

    def __init__(self, message: str, *, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


class MinerHandle(Protocol):
    """A connected miner, as the broker sees it (implemented by the miner link adapter)."""

    miner_id: str
    tier: Tier
    owner_account_id: str
    dservices: frozenset[str]
    capacity: int

    async def run(self, unit: WorkUnit) -> WorkResult:
        """Runs ``unit`` until its deadline; raises MinerFailedError, MinerRefusedError,
        DServiceFailedError or DeadlineExceededError."""

    def close(self, reason: str) -> None:
        """Drops the miner's stream."""


#: (DService, tier, owner): the miners interchangeable for a request. The owner is the
#: account a tier-1 miner belongs to (it runs only its owner's work), '' for other tiers.
PoolKey = tuple[str, Tier, str]


def _miner_pools(miner: MinerHandle) -> list[PoolKey]:
    owner = miner.owner_account_id if miner.tier is Tier.TIER_1_PRIVATE else ""
    return [(d, miner.tier, owner) for d in sorted(miner.dservices)]


def _unit_pools(unit: WorkUnit) -> list[PoolKey]:
    return [
        (unit.dservice, t, unit.account_id if t is Tier.TIER_1_PRIVATE else "")
        for t in unit.allowed_tiers
    ]


@dataclass(frozen=True)
class Outcome:
    """A finished work unit."""

    result: WorkResult
    miner_id: str
    tier: Tier
    attempts: int


@dataclass(eq=False)
class _Slot:
    miner: MinerHandle
    pools: list[PoolKey]
    #: How many units the miner may hold now: its hello's capacity at first, then what its
    #: WorkSlots say (``Broker.set_free``).
    capacity: int
    busy: int = 0
    #: Units waiting for this miner in particular (affinity).
    own_queue: collections.deque[_Waiter] = field(default_factory=collections.deque)

    @property
    def free(self) -> bool:
        return self.busy < self.capacity


@dataclass(eq=False)
class _Waiter:
    unit: WorkUnit
    seq: int
    future: asyncio.Future[_Slot]
    queues: list[collections.deque[_Waiter]] = field(default_factory=list)


class Broker:
    """Matches work units to miners."""

    def __init__(
        self,
        *,
        dispatch_attempts: int = 5,
        danger_threshold: int = 1000,
        account_limit: int = 256,
        appear_grace_s: float = 5.0,
        affinity_entries: int = 10_000,
        static_dservices: Iterable[str] = (),
    ) -> None:
        self._attempts = dispatch_attempts
        self._danger = danger_threshold
        self._account_limit = account_limit
        self._appear_grace_s = appear_grace_s
        self._affinity_entries = affinity_entries
        self._static = frozenset(static_dservices)
        self._slots: dict[MinerHandle, _Slot] = {}
        #: DService -> how many connected miners offer it (a request's check is one lookup,
        #: whatever the number of miners).
        self._offered: collections.Counter[str] = collections.Counter()
        #: pool -> miners with free capacity, in insertion order (an ordered set).
        self._free: dict[PoolKey, dict[_Slot, None]] = collections.defaultdict(dict)
        #: pool -> connected miners.
        self._connected: collections.Counter[PoolKey] = collections.Counter()
        self._queues: dict[PoolKey, collections.deque[_Waiter]] = collections.defaultdict(
            collections.deque
        )
        self._waiting: collections.Counter[str] = collections.Counter()
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._account_load: collections.Counter[str] = collections.Counter()
        self._affinity: collections.OrderedDict[str, MinerHandle] = collections.OrderedDict()
        self._seq = itertools.count()
        self.redispatches = 0
        #: The request-body limits the connected miners offer per DService (the miner link
        #: records a miner's offers as it joins and leaves).
        self.body_limits = DServiceLimits()

    # -- miners -----------------------------------------------------------------------------

    def add_miner(self, miner: MinerHandle) -> None:
        """Puts a miner in the pool and hands it waiting work."""
        slot = _Slot(miner, _miner_pools(miner), miner.capacity)
        self._slots[miner] = slot
        self._offered.update(miner.dservices)
        for pool in slot.pools:
            self._connected[pool] += 1
            self._free[pool][slot] = None
        log_event(
            _log,
            "miner_joined",
            miner_id=miner.miner_id,
            tier=int(miner.tier),
            dservices=sorted(miner.dservices),
        )
        self._serve(slot)

    def remove_miner(self, miner: MinerHandle) -> None:
        """Takes a miner out of the pool (its in-flight work fails over by itself)."""
        slot = self._slots.pop(miner, None)
        if slot is None:
            return
        self._offered -= collections.Counter(miner.dservices)  # drops the counts at zero
        for pool in slot.pools:
            self._connected[pool] -= 1
            if not self._connected[pool]:
                del self._connected[pool]
            self._free[pool].pop(slot, None)
        # Units that waited for this miner by affinity now take any miner.
        while slot.own_queue:
            waiter = slot.own_queue.popleft()
            if not waiter.future.done():
                self._enqueue_pools(waiter, front=True)
        log_event(_log, "miner_left", miner_id=miner.miner_id)

    def set_free(self, miner: MinerHandle, free: int) -> None:
        """The miner says ``free`` more units fit now (WorkSlots; 0 while it drains)."""
        slot = self._slots.get(miner)
        if slot is not None:
            self._set_capacity(slot, slot.busy + max(0, free))

    def _set_capacity(self, slot: _Slot, capacity: int) -> None:
        """``slot`` may hold ``capacity`` units from now on: the index of free miners follows,
        and a miner that became free takes waiting work."""
        was_free = slot.free
        slot.capacity = capacity
        if slot.free and not was_free:
            for pool in slot.pools:
                self._free[pool][slot] = None
            self._serve(slot)
        elif was_free and not slot.free:
            for pool in slot.pools:
                self._free[pool].pop(slot, None)

    def hold_slot(self, miner: MinerHandle) -> None:
        """A unit the node gave up on may still run on the miner: keep its slot taken until
        the miner's next WorkSlots says otherwise."""
        slot = self._slots.get(miner)
        if slot is not None:
            self.set_free(miner, slot.capacity - slot.busy - 1)

    def miners(self) -> list[MinerHandle]:
        """Every miner in the pool."""
        return list(self._slots)

    def known_dservices(self) -> frozenset[str]:
        """DService names this node serves now."""
        return self._static.union(self._offered)

    # -- work -------------------------------------------------------------------------------

    async def submit(self, unit: WorkUnit) -> Outcome:
        """Runs ``unit`` to completion on some miner, re-dispatching after miner failures."""
        if unit.dservice not in self._offered and unit.dservice not in self._static:
            raise NotFoundError(f"unknown DService {unit.dservice!r}", reason="UNKNOWN_DSERVICE")
        if self._waiting[unit.dservice] >= self._danger:
            raise ResourceExhaustedError(
                f"node overloaded for DService {unit.dservice!r}", reason="QUEUE_FULL"
            )
        if self._account_load[unit.account_id] >= self._account_limit:
            raise AccountLimitError(
                f"account has {self._account_limit} requests in flight; retry later"
            )
        self._account_load[unit.account_id] += 1
        try:
            return await self._run(unit)
        finally:
            self._account_load[unit.account_id] -= 1
            if not self._account_load[unit.account_id]:
                del self._account_load[unit.account_id]

    async def _run(self, unit: WorkUnit) -> Outcome:
        front = False
        while True:
            slot = await self._acquire(unit, front=front)
            miner = slot.miner
            unit.attempts += 1
            self._in_flight[unit.dservice] += 1
            busy = False
            try:
                result = await miner.run(unit)
            except (MinerFailedError, MinerRefusedError) as exc:
                failed = isinstance(exc, MinerFailedError)
                log_event(
                    _log,
                    "dispatch_failed" if failed else "dispatch_refused",
                    logging.WARNING,
                    work_id=unit.work_id,
                    request_id=unit.request_id,
                    miner_id=miner.miner_id,
                    attempt=unit.attempts,
                    error=str(exc),
                )
                if failed:
                    self.remove_miner(miner)
                    miner.close(str(exc))
                elif isinstance(exc, MinerRefusedError) and exc.busy:
                    busy = True  # not barred: the unit may run there once it has a slot
                else:
                    unit.refused_by.add(miner.miner_id)
                if unit.attempts >= self._attempts:
                    raise UnavailableError(
                        f"no miner completed the work in {unit.attempts} attempts",
                        reason="RETRY_BUDGET_EXHAUSTED",
                    ) from exc
                if unit.remaining_s() <= 0:
                    raise DeadlineExceededError("the deadline passed during re-dispatch") from exc
                self.redispatches += 1
                front = True
                continue
            finally:
                self._in_flight[unit.dservice] -= 1
                if busy:
                    # No free slot on that miner, the one released below included, until its
                    # next WorkSlots (set_free) says otherwise.
                    self._set_capacity(slot, slot.busy - 1)
                self._release(slot)
            if unit.affinity_key:
                self._remember_affinity(unit.affinity_key, miner)
            return Outcome(result, miner.miner_id, miner.tier, unit.attempts)

    # -- matching ---------------------------------------------------------------------------

    def _take(self, slot: _Slot) -> _Slot:
        slot.busy += 1
        if not slot.free:
            for pool in slot.pools:
                self._free[pool].pop(slot, None)
        return slot

    def _free_slot(self, unit: WorkUnit) -> _Slot | None:
        """A free miner for ``unit`` now, or None; O(number of allowed tiers)."""
        for pool in _unit_pools(unit):
            free = self._free.get(pool)
            if not free:
                continue
            slot = next(iter(free))
            if slot.miner.miner_id in unit.refused_by:
                # Rare (a miner refused this unit): look past it.
                slot = next((s for s in free if s.miner.miner_id not in unit.refused_by), slot)
                if slot.miner.miner_id in unit.refused_by:
                    continue
            # Round robin among the pool's free miners.
            del free[slot]
            free[slot] = None
            return slot
        return None

    def _affine_slot(self, unit: WorkUnit) -> _Slot | None:
        if not unit.affinity_key:
            return None
        miner = self._affinity.get(unit.affinity_key)
        slot = self._slots.get(miner) if miner is not None else None
        if slot is None or not set(slot.pools) & set(_unit_pools(unit)):
            return None
        self._affinity.move_to_end(unit.affinity_key)
        return slot

    def _remember_affinity(self, key: str, miner: MinerHandle) -> None:
        self._affinity[key] = miner
        self._affinity.move_to_end(key)
        while len(self._affinity) > self._affinity_entries:
            self._affinity.popitem(last=False)

    def _has_candidates(self, unit: WorkUnit) -> bool:
        return any(self._connected[pool] for pool in _unit_pools(unit))

    async def _acquire(self, unit: WorkUnit, *, front: bool) -> _Slot:
        affine = self._affine_slot(unit)
        if affine is not None and affine.free:
            return self._take(affine)
        if affine is None:
            slot = self._free_slot(unit)
            if slot is not None:
                return self._take(slot)
        loop = asyncio.get_running_loop()
        seq = -next(self._seq) if front else next(self._seq)
        waiter = _Waiter(unit, seq, loop.create_future())
        if affine is not None:
            # Same affinity key, same miner while it is connected.
            (affine.own_queue.appendleft if front else affine.own_queue.append)(waiter)
            waiter.queues.append(affine.own_queue)
        else:
            self._enqueue_pools(waiter, front=front)
        self._waiting[unit.dservice] += 1
        has_candidates = self._has_candidates(unit)
        limit = unit.remaining_s()
        if not has_candidates:
            limit = min(limit, self._appear_grace_s)
        try:
            async with asyncio.timeout(max(0.0, limit)):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()
            if not self._has_candidates(unit):
                tiers = ", ".join(t.name for t in unit.allowed_tiers)
                raise UnavailableError(
                    f"no connected miner may run DService {unit.dservice!r} for this account "
                    f"on tiers {tiers}",
                    reason="NO_ELIGIBLE_MINER",
                ) from None
            raise DeadlineExceededError(
                f"no miner for DService {unit.dservice!r} became free before the deadline"
            ) from None
        except asyncio.CancelledError:
            # The caller went away after a miner was reserved for it: give the slot back.
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(waiter.future.result())
            raise
        finally:
            self._waiting[unit.dservice] -= 1
            for queue in waiter.queues:
                if waiter in queue and not waiter.future.done():
                    queue.remove(waiter)
            if not waiter.future.done():
                waiter.future.cancel()

    def _enqueue_pools(self, waiter: _Waiter, *, front: bool) -> None:
        for pool in _unit_pools(waiter.unit):
            queue = self._queues[pool]
            (queue.appendleft if front else queue.append)(waiter)
            waiter.queues.append(queue)

    def _release(self, slot: _Slot) -> None:
        slot.busy -= 1
        if self._slots.get(slot.miner) is not slot:
            return  # the miner left
        if slot.busy == slot.capacity - 1:
            for pool in slot.pools:
                self._free[pool][slot] = None
        self._serve(slot)

    def _serve(self, slot: _Slot) -> None:
        """Hands a miner with free capacity the oldest work it may run; O(its pools)."""
        while slot.free:
            waiter = self._pop(slot.own_queue)
            if waiter is None:
                heads = [
                    (w.seq, pool)
                    for pool in slot.pools
                    if (w := self._head(self._queues.get(pool))) is not None
                    and slot.miner.miner_id not in w.unit.refused_by
                ]
                if not heads:
                    return
                _, pool = min(heads)
                waiter = self._queues[pool].popleft()
            waiter.future.set_result(self._take(slot))

    @staticmethod
    def _head(queue: collections.deque[_Waiter] | None) -> _Waiter | None:
        """The first live waiter of ``queue``, dropping served ones (each is dropped once)."""
        while queue:
            if not queue[0].future.done():
                return queue[0]
            queue.popleft()
        return None

    def _pop(self, queue: collections.deque[_Waiter]) -> _Waiter | None:
        waiter = self._head(queue)
        if waiter is not None:
            queue.popleft()
        return waiter

    # -- status -----------------------------------------------------------------------------

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """Per DService: (waiting, in flight)."""
        names = {d for d, n in self._waiting.items() if n} | {
            d for d, n in self._in_flight.items() if n
        }
        return {d: (self._waiting[d], self._in_flight[d]) for d in sorted(names)}

    def pools(self) -> dict[tuple[Tier, str], tuple[int, int]]:
        """Per (tier, DService): (connected, idle)."""
        result: dict[tuple[Tier, str], tuple[int, int]] = {}
        for slot in self._slots.values():
            for dservice in slot.miner.dservices:
                connected, idle = result.get((slot.miner.tier, dservice), (0, 0))
                result[(slot.miner.tier, dservice)] = (connected + 1, idle + (slot.busy == 0))
        return result

    @property
    def danger_threshold(self) -> int:
        """Waiting units per DService past which new work is refused."""
        return self._danger


__all__ = [
    "Broker",
    "CgnError",
    "MinerFailedError",
    "MinerHandle",
    "MinerRefusedError",
    "Outcome",
    "WorkUnit",
]
