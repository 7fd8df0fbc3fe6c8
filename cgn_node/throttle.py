"""Failed-login throttling, checked before a login costs Central an Argon2 check.

Two limits, both in this node process's memory (each node process throttles on its own; an
attacker spreading over processes gains at most that factor):

* per (account, source address): after ``free_failures`` failures, each further failure
  blocks that pair for a doubling delay (1 s, 2 s, 4 s ... at most ``max_block_s``); a
  successful login clears the pair;
* per source address: at most ``address_failures`` failures in any ``window_s``; past that
  the address is blocked until the window frees.

A blocked login is refused with ``LOGIN_THROTTLED`` (429 + ``Retry-After`` at the gateway)
without asking Central. A right login from another address is never slowed. Memory is bounded:
at most ``max_entries`` pairs and addresses are remembered, oldest forgotten first.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cgn_common.errors import ResourceExhaustedError

K = TypeVar("K")
V = TypeVar("V")


class LoginThrottledError(ResourceExhaustedError):
    """Too many failed logins from this address (for this account)."""

    reason = "LOGIN_THROTTLED"


@dataclass
class _Pair:
    failures: int = 0
    pending: int = 0
    blocked_until: float = 0.0


@dataclass
class _Address:
    failures: collections.deque[float] = field(default_factory=collections.deque)
    pending: int = 0


class LoginThrottle:
    """Decides whether a login attempt may reach Central."""

    def __init__(
        self,
        *,
        free_failures: int = 3,
        max_block_s: float = 300.0,
        address_failures: int = 30,
        window_s: float = 60.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = free_failures
        self._max_block_s = max_block_s
        self._address_failures = address_failures
        self._window_s = window_s
        self._max_entries = max_entries
        self._clock = clock
        self._pairs: collections.OrderedDict[tuple[str, str], _Pair] = collections.OrderedDict()
        self._addresses: collections.OrderedDict[str, _Address] = collections.OrderedDict()
        self.refused = 0

    def begin(self, account_id: str, address: str) -> None:
        """Admits one login attempt, or raises LoginThrottledError without it reaching Central.

        Attempts still in flight count as failures until they end, so a burst of concurrent
        attempts is throttled like a sequence of failures. Every admitted attempt must end
        with ``failed``, ``succeeded`` or ``abandoned``.
        """
        now = self._clock()
        wait = 0.0
        pair = self._pairs.get((account_id, address))
        if pair is not None:
            if pair.blocked_until > now:
                wait = pair.blocked_until - now
            elif pair.failures + pair.pending >= self._free and pair.pending:
                wait = 1.0  # past the free failures, one probe at a time
        seen = self._addresses.get(address)
        if seen is not None:
            self._expire(seen, now)
            if len(seen.failures) + seen.pending >= self._address_failures:
                oldest = seen.failures[0] if seen.failures else now
                wait = max(wait, oldest + self._window_s - now, 1.0)
        if wait > 0:
            self.refused += 1
            raise LoginThrottledError(
                "too many failed logins; retry later", retry_after_s=math.ceil(wait)
            )
        self._remember(self._pairs, (account_id, address), _Pair).pending += 1
        self._remember(self._addresses, address, _Address).pending += 1

    def _end(self, account_id: str, address: str) -> tuple[_Pair, _Address]:
        pair = self._remember(self._pairs, (account_id, address), _Pair)
        seen = self._remember(self._addresses, address, _Address)
        pair.pending = max(0, pair.pending - 1)
        seen.pending = max(0, seen.pending - 1)
        return pair, seen

    def abandoned(self, account_id: str, address: str) -> None:
        """An admitted attempt ended without a verdict (e.g. Central unreachable)."""
        self._end(account_id, address)

    def failed(self, account_id: str, address: str) -> None:
        """Records a failed login."""
        now = self._clock()
        pair, seen = self._end(account_id, address)
        pair.failures += 1
        if pair.failures > self._free:
            delay = min(self._max_block_s, 2.0 ** (pair.failures - self._free - 1))
            pair.blocked_until = now + delay
        self._expire(seen, now)
        seen.failures.append(now)

    def succeeded(self, account_id: str, address: str) -> None:
        """A right key clears the pair's failures (the address's window stays)."""
        pair, _ = self._end(account_id, address)
        pair.failures = 0
        pair.blocked_until = 0.0

    def _expire(self, seen: _Address, now: float) -> None:
        while seen.failures and seen.failures[0] <= now - self._window_s:
            seen.failures.popleft()

    def _remember(self, table: collections.OrderedDict[K, V], key: K, make: Callable[[], V]) -> V:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = make()
            while len(table) > self._max_entries:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return entry
