"""The work a node brokers, as plain Python: the broker and the links carry these, never
protos (``cgn_node/_convert.py`` turns protos into them and back)."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from cgn_common.types import Metering, Tier

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class HttpRequest:
    """The DApp's request for the DService: method, path and query unchanged."""

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes


@dataclass(frozen=True)
class Usage:
    """Resources a work unit used, as the miner measured them; what each figure means and how
    exact it is: docs/metering.md. A figure whose metering is ``NOT_MEASURED`` is zero."""

    cpu_time_us: int = 0
    wall_time_us: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    peak_memory_bytes: int = 0
    cpu_metering: Metering = Metering.NOT_MEASURED
    peak_memory_metering: Metering = Metering.NOT_MEASURED


@dataclass(frozen=True)
class WorkResult:
    """The DService's answer and what it cost."""

    status: int
    headers: Headers
    body: bytes
    usage: Usage


@dataclass(frozen=True)
class CancelReport:
    """A dispatch the node cancelled because its caller went away or its deadline passed:
    the miner it ran on and, once that miner reports it, the usage up to the cancel (what
    abandoned work is billed for, SPEC 15). ``usage`` fails when the miner is lost first."""

    miner_id: str
    usage: asyncio.Future[Usage]


@dataclass(eq=False)
class WorkUnit:
    """One DApp request travelling through the broker.

    ``deadline`` is on the ``time.monotonic()`` clock: the broker and the miner link give up
    on the unit then (504). ``attempts`` counts dispatches.
    """

    work_id: str
    dservice: str
    account_id: str
    allowed_tiers: tuple[Tier, ...]
    request: HttpRequest
    request_id: str = ""
    affinity_key: str = ""
    deadline: float = math.inf
    attempts: int = 0
    arrived: float = field(default_factory=time.monotonic)
    #: Miners that refused this unit: it is not offered to them again.
    refused_by: set[str] = field(default_factory=set)
    #: Set when the node cancelled the unit's last dispatch (its caller left, or its deadline
    #: passed): where the miner's usage up to the cancel arrives.
    cancelled: CancelReport | None = None

    def remaining_s(self) -> float:
        """Seconds until the deadline (negative once past)."""
        return self.deadline - time.monotonic()
