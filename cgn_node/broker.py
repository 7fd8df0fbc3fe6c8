"""The work broker (SPEC section 4, the paper's WORK BROKER).

Work waits FCFS per DService; an idle miner that may run it takes it at once, so the queue
is normally empty. A miner that misses the ack deadline or dies mid-work is dropped and the
work goes back to the *head* of its queue, so a miner failure never reaches the DApp.

The broker does not look inside requests or responses: ``payload`` and results are opaque
objects that the miner link adapter knows how to send and read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cgn_common.errors import (
    CgnError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from cgn_common.logs import log_event
from cgn_common.types import Tier

_log = logging.getLogger(__name__)


class MinerFailedError(Exception):
    """The miner could not finish the work: the broker re-dispatches it elsewhere."""


class MinerHandle(Protocol):
    """A connected miner, as the broker sees it (implemented by the miner link adapter)."""

    miner_id: str
    tier: Tier
    owner_account_id: str
    dservices: frozenset[str]
    capacity: int

    async def run(self, unit: WorkUnit) -> Any:
        """Runs ``unit``; returns the miner's result or raises MinerFailedError."""

    def close(self, reason: str) -> None:
        """Drops the miner's stream."""


@dataclass(eq=False)
class WorkUnit:
    """One DApp request travelling through the broker."""

    work_id: str
    dservice: str
    account_id: str
    allowed_tiers: tuple[Tier, ...]
    payload: Any
    affinity_key: str = ""
    attempts: int = 0
    arrived: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Outcome:
    """A finished work unit."""

    result: Any
    miner_id: str
    tier: Tier
    attempts: int


@dataclass(eq=False)
class _Waiter:
    unit: WorkUnit
    future: asyncio.Future[MinerHandle]


@dataclass(eq=False)
class _Slot:
    miner: MinerHandle
    busy: int = 0


class Broker:
    """Matches work units to miners."""

    def __init__(
        self,
        *,
        dispatch_attempts: int = 5,
        danger_threshold: int = 1000,
        queue_timeout_s: float = 30.0,
        static_dservices: Iterable[str] = (),
    ) -> None:
        self._attempts = dispatch_attempts
        self._danger = danger_threshold
        self._queue_timeout_s = queue_timeout_s
        self._static = frozenset(static_dservices)
        self._slots: dict[MinerHandle, _Slot] = {}
        self._queues: dict[str, collections.deque[_Waiter]] = collections.defaultdict(
            collections.deque
        )
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._affinity: dict[str, MinerHandle] = {}

    # -- miners -----------------------------------------------------------------------------

    def add_miner(self, miner: MinerHandle) -> None:
        """Puts a miner in the pool and hands it waiting work."""
        self._slots[miner] = _Slot(miner)
        log_event(
            _log,
            "miner_joined",
            miner_id=miner.miner_id,
            tier=int(miner.tier),
            dservices=sorted(miner.dservices),
        )
        self._wake(miner)

    def remove_miner(self, miner: MinerHandle) -> None:
        """Takes a miner out of the pool (its in-flight work fails over by itself)."""
        if self._slots.pop(miner, None) is not None:
            log_event(_log, "miner_left", miner_id=miner.miner_id)
        self._affinity = {k: m for k, m in self._affinity.items() if m is not miner}

    def miners(self) -> list[MinerHandle]:
        """Every miner in the pool."""
        return list(self._slots)

    def known_dservices(self) -> frozenset[str]:
        """DService names this node serves now."""
        offered = (d for miner in self._slots for d in miner.dservices)
        return self._static.union(offered)

    # -- work -------------------------------------------------------------------------------

    async def submit(self, unit: WorkUnit) -> Outcome:
        """Runs ``unit`` to completion on some miner, re-dispatching after miner failures."""
        if unit.dservice not in self.known_dservices():
            raise NotFoundError(f"unknown DService {unit.dservice!r}")
        if len(self._queues[unit.dservice]) >= self._danger:
            raise ResourceExhaustedError(f"node overloaded for DService {unit.dservice!r}")
        deadline = unit.arrived + self._queue_timeout_s
        front = False
        while True:
            miner = await self._acquire(unit, front=front, deadline=deadline)
            unit.attempts += 1
            self._in_flight[unit.dservice] += 1
            try:
                result = await miner.run(unit)
            except MinerFailedError as exc:
                log_event(
                    _log,
                    "dispatch_failed",
                    logging.WARNING,
                    work_id=unit.work_id,
                    miner_id=miner.miner_id,
                    attempt=unit.attempts,
                    error=str(exc),
                )
                self.remove_miner(miner)
                miner.close(str(exc))
                if unit.attempts >= self._attempts:
                    raise UnavailableError(
                        f"work could not be completed after {unit.attempts} attempts"
                    ) from exc
                front = True
                continue
            finally:
                self._in_flight[unit.dservice] -= 1
                self._release(miner)
            if unit.affinity_key:
                self._affinity[unit.affinity_key] = miner
            return Outcome(result, miner.miner_id, miner.tier, unit.attempts)

    def _may_run(self, miner: MinerHandle, unit: WorkUnit) -> bool:
        if unit.dservice not in miner.dservices or miner.tier not in unit.allowed_tiers:
            return False
        # Tier-1 miners run only their owner's work (SPEC section 15).
        return miner.tier is not Tier.TIER_1_PRIVATE or miner.owner_account_id == unit.account_id

    def _free_miner(self, unit: WorkUnit) -> MinerHandle | None:
        preferred = self._affinity.get(unit.affinity_key) if unit.affinity_key else None
        if preferred is not None:
            slot = self._slots.get(preferred)
            if slot is not None and slot.busy < preferred.capacity:
                return preferred
            if slot is not None:
                return None  # wait for the affine miner while it is connected
        best: _Slot | None = None
        for slot in self._slots.values():
            free = slot.busy < slot.miner.capacity and self._may_run(slot.miner, unit)
            if free and (best is None or slot.busy < best.busy):
                best = slot
        return best.miner if best else None

    async def _acquire(self, unit: WorkUnit, *, front: bool, deadline: float) -> MinerHandle:
        queue = self._queues[unit.dservice]
        if not queue:
            miner = self._free_miner(unit)
            if miner is not None:
                self._slots[miner].busy += 1
                return miner
        waiter = _Waiter(unit, asyncio.get_running_loop().create_future())
        if front:
            queue.appendleft(waiter)
        else:
            queue.append(waiter)
        try:
            timeout = max(0.0, deadline - time.monotonic())
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()
            raise UnavailableError(
                f"no miner for DService {unit.dservice!r} became free in time"
            ) from None
        except asyncio.CancelledError:
            # The caller went away after a miner was reserved for it: give the slot back.
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(waiter.future.result())
            raise
        finally:
            if waiter in queue:
                queue.remove(waiter)
            if waiter.future.cancelled() or not waiter.future.done():
                waiter.future.cancel()

    def _release(self, miner: MinerHandle) -> None:
        slot = self._slots.get(miner)
        if slot is not None:
            slot.busy -= 1
            self._wake(miner)

    def _wake(self, miner: MinerHandle) -> None:
        slot = self._slots.get(miner)
        if slot is None:
            return
        for dservice in miner.dservices:
            queue = self._queues.get(dservice)
            while queue and slot.busy < miner.capacity:
                waiter = next((w for w in queue if self._may_run(miner, w.unit)), None)
                if waiter is None:
                    break
                queue.remove(waiter)
                if not waiter.future.done():
                    slot.busy += 1
                    waiter.future.set_result(miner)

    # -- status -----------------------------------------------------------------------------

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """Per DService: (waiting, in flight)."""
        names = set(self._queues) | set(self._in_flight)
        return {d: (len(self._queues.get(d, ())), self._in_flight[d]) for d in sorted(names)}

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


__all__ = ["Broker", "CgnError", "MinerFailedError", "MinerHandle", "Outcome", "WorkUnit"]
