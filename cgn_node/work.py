"""The work a node brokers, as plain Python: the broker and the links carry these, never
protos (``cgn_node/_convert.py`` turns protos into them and back)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cgn_common.types import Metering, Tier
from cgn_node.spool import Spool

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class HttpRequest:
    """The DApp's request for the DService: method, path and query unchanged. Its body is
    ``body``, or, for a body that came streamed, ``spool`` (``body`` then empty)."""

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    spool: Spool | None = None

    @property
    def body_size(self) -> int:
        """The body's length in bytes."""
        return self.spool.size if self.spool is not None else len(self.body)


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


class ResponseBody:
    """A streamed answer's body on its way from the miner's data plane to the caller: a few
    slices at most are held (``put`` waits while the caller has not taken them, and the wait
    stops the node reading the miner's stream, so gRPC flow control slows the miner). It ends
    with the miner's usage, or fails when the miner is lost mid-answer."""

    def __init__(self, slots: int = 8) -> None:
        self._queue: asyncio.Queue[bytes | Usage | BaseException] = asyncio.Queue(slots)
        self.ended = False
        self.closed = False
        self._gone = asyncio.Event()
        #: Set by the miner link when the answer's head came without its body: the body
        #: then comes through here.
        self.started = False
        #: Set when the answer ended: what the miner measured.
        self.usage: Usage | None = None

    async def put(self, data: bytes) -> bool:
        """Hands one slice to the caller (waits while the caller is behind); False once the
        caller has gone (:meth:`close`): the rest is not wanted."""
        if self.closed:
            return False
        waiter = asyncio.ensure_future(self._queue.put(data))
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not waiter.done():
                waiter.cancel()
        return not self.closed

    def close(self) -> None:
        """The caller has gone: slices still coming are dropped, and the relay stops."""
        self.closed = True
        self._gone.set()

    async def end(self, usage: Usage) -> None:
        """The answer is complete."""
        self.ended = True
        await self._queue.put(usage)

    def fail(self, error: BaseException) -> None:
        """The answer will not complete (never waits: the caller learns it after the slices
        already held)."""
        if self.ended:
            return
        self.ended = True
        try:
            self._queue.put_nowait(error)
        except asyncio.QueueFull:  # the caller is behind: it gets the error instead of them
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(error)

    async def slices(self) -> AsyncIterator[bytes]:
        """The body's slices as they arrive; raises the failure when there is one."""
        while True:
            item = await self._queue.get()
            if isinstance(item, Usage):
                self.usage = item
                return
            if isinstance(item, BaseException):
                raise item
            yield item


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
    #: Set for a caller that takes the answer as it comes (``CallStream``): a large answer's
    #: body is relayed through it and the unit's result holds only the head; None for a
    #: caller that takes the whole answer at once.
    stream: ResponseBody | None = None

    def remaining_s(self) -> float:
        """Seconds until the deadline (negative once past)."""
        return self.deadline - time.monotonic()
