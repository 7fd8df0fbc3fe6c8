"""Per-request metering in the process runtime: a request alone in its DService process gets
the process's own figures; requests that overlap share its CPU by the rule below and have
their memory reported as not measured (docs/metering.md).

The rule. The meter reads the process's CPU time once at every request start and end. The
CPU used between two consecutive events is split equally among the requests in flight during
that interval. A request alone from start to end therefore gets exactly the process's CPU
delta over its life; CPU used while no request is in flight (idle) is billed to nobody; and
the shares of all requests add up exactly, to the microsecond, to what the process used while
any was in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cgn_common.types import Metering
from miner._proc import PeakRss, ProcessTreeCpu


@dataclass(frozen=True)
class Metered:
    """What one request used, with how each figure was obtained; a figure that is not
    measured is zero."""

    cpu_time_us: int
    cpu_metering: Metering
    peak_memory_bytes: int
    peak_memory_metering: Metering


class Ticket:
    """One request in flight, from :meth:`CpuAccountant.begin` to its end."""

    __slots__ = ("alone", "generation", "memory_reset", "share_start")

    def __init__(self, share_start: int, alone: bool, generation: int) -> None:
        self.share_start = share_start
        self.alone = alone
        self.generation = generation
        self.memory_reset = False


class CpuAccountant:
    """Apportions the CPU of one process among the requests it serves (the module's rule).

    ``read_cpu_us`` is read once per event and must never decrease. Each interval adds
    ``delta // n`` to every in-flight request through one running per-request total, so an
    event costs the same whatever the concurrency; the remainder (under ``n`` µs) goes to the
    next request to end, which keeps the sum exact.
    """

    def __init__(self, read_cpu_us: Callable[[], int]) -> None:
        self._read = read_cpu_us
        self._last = read_cpu_us()
        self._in_flight = 0
        #: CPU each request in flight since the first event has been given, in total.
        self._per_request = 0
        #: Remainders of the equal splits, not yet given to anyone.
        self._spare = 0
        #: Counts the starts that overlapped another request: a request saw no other request
        #: if it started alone and this is unchanged at its end.
        self._overlaps = 0
        #: CPU the process used while at least one request was in flight.
        self.busy_cpu_us = 0
        #: CPU the process used while no request was in flight (billed to nobody).
        self.idle_cpu_us = 0
        #: The sum of the shares given to ended requests (equals busy_cpu_us when idle).
        self.billed_cpu_us = 0

    @property
    def in_flight(self) -> int:
        """Requests begun and not yet ended."""
        return self._in_flight

    def _advance(self) -> None:
        now = self._read()
        delta = max(0, now - self._last)
        self._last = max(self._last, now)
        if self._in_flight == 0:
            self.idle_cpu_us += delta
            return
        self.busy_cpu_us += delta
        each, rest = divmod(delta, self._in_flight)
        self._per_request += each
        self._spare += rest

    def begin(self) -> Ticket:
        """A request starts."""
        self._advance()
        alone = self._in_flight == 0
        if not alone:
            self._overlaps += 1
        self._in_flight += 1
        return Ticket(self._per_request, alone, self._overlaps)

    def end(self, ticket: Ticket) -> tuple[int, bool]:
        """The request of ``ticket`` ended: its CPU share in µs, and True when it was alone
        in the process from start to end (the share is then the process's exact delta)."""
        self._advance()
        share = self._per_request - ticket.share_start + self._spare
        self._spare = 0
        self._in_flight -= 1
        self.billed_cpu_us += share
        return share, ticket.alone and ticket.generation == self._overlaps


class ProcessMeter:
    """Meters the requests sent to one DService process (one spawn of it).

    CPU: the :class:`CpuAccountant` over the process tree's CPU time. Peak memory: measured
    only for a request alone in a process without children, by resetting the process's peak
    at its start and reading it at its end; otherwise not measured.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu = ProcessTreeCpu(pid)
        self.cpu.rescan()
        self._peak = PeakRss(pid)
        self.accountant = CpuAccountant(self.cpu.read_us)
        self._closing = False

    def begin(self) -> Ticket:
        """A request is about to be sent."""
        if self.accountant.in_flight == 0:
            # A busy period starts: descendants born while idle are found now, so their past
            # CPU falls in the idle interval.
            self.cpu.rescan()
        ticket = self.accountant.begin()
        if ticket.alone and self.cpu.single:
            ticket.memory_reset = self._peak.reset()
        return ticket

    def end(self, ticket: Ticket) -> Metered:
        """The request's answer has been read, or the request failed or was cancelled (its
        share must still be taken, or it would go to the others)."""
        cpu_us, isolated = self.accountant.end(ticket)
        peak: int | None = None
        if isolated and ticket.memory_reset and self.cpu.single:
            peak = self._peak.read()
        if self._closing and self.accountant.in_flight == 0:
            self._close_files()
        return Metered(
            cpu_time_us=cpu_us,
            cpu_metering=Metering.ISOLATED if isolated else Metering.APPORTIONED,
            peak_memory_bytes=0 if peak is None else peak,
            peak_memory_metering=Metering.NOT_MEASURED if peak is None else Metering.ISOLATED,
        )

    def close(self) -> None:
        """Closes the meter's files once no request is in flight any more (those still in
        flight keep reading until they end)."""
        self._closing = True
        if self.accountant.in_flight == 0:
            self._close_files()

    def _close_files(self) -> None:
        self.cpu.close()
        self._peak.close()
