"""Metering of the real echo DService, started through ``ProcessRuntime`` as the miner starts
it, against the CPU its process really used, read from outside with psutil (issue 9: within
10% for a call alone, within 20% in total for 16 at a time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psutil
import pytest

from cgn_common.types import Metering
from miner.runtime import DServiceProcess, DServiceResponse, ProcessRuntime, Spent
from tests.helpers.wait import until

#: CPU each call burns; above the 200 ms the issue asks for, so that psutil's 10 ms ticks
#: (up to two per reading, each of utime and stime rounding down) stay well inside 10%.
ALONE_BURN_MS = 300
BATCH_BURN_MS = 200
BATCH = 16


@pytest.fixture
async def echo() -> AsyncIterator[DServiceProcess]:
    runtime = ProcessRuntime(["echo"])
    await runtime.start()
    try:
        yield runtime.get("echo")
    finally:
        await runtime.stop()


def _used_us(pid: int) -> int:
    """The echo process's CPU so far, as anyone could read it (psutil: /proc/<pid>/stat)."""
    t = psutil.Process(pid).cpu_times()
    total: float = t.user + t.system + t.children_user + t.children_system
    return round(total * 1_000_000)


async def _burn(echo: DServiceProcess, ms: int) -> DServiceResponse:
    answer = await echo.call("POST", "/burn", "", [("X-Echo-Burn-Cpu-Ms", str(ms).encode())], b"")
    assert answer.status == 200
    return answer


async def test_a_call_alone_is_metered_within_10_percent(echo: DServiceProcess) -> None:
    assert echo.pid is not None
    before = _used_us(echo.pid)
    answer = await _burn(echo, ALONE_BURN_MS)
    used = _used_us(echo.pid) - before

    assert used >= ALONE_BURN_MS * 1000 * 0.9  # the switch really burns CPU
    assert answer.cpu_metering is Metering.ISOLATED
    assert abs(answer.cpu_time_us - used) <= 0.10 * used, (answer.cpu_time_us, used)
    # Alone, its peak memory is its own: the process's peak while it ran, not its lifetime's.
    assert answer.peak_memory_metering is Metering.ISOLATED
    rss = psutil.Process(echo.pid).memory_info().rss
    assert rss // 2 < answer.peak_memory_bytes < 4 * rss


async def test_16_calls_at_a_time_are_metered_within_20_percent_in_total(
    echo: DServiceProcess,
) -> None:
    assert echo.pid is not None
    assert echo.meter is not None
    accountant = echo.meter.accountant
    billed_before, busy_before = accountant.billed_cpu_us, accountant.busy_cpu_us
    before = _used_us(echo.pid)
    answers = await asyncio.gather(*(_burn(echo, BATCH_BURN_MS) for _ in range(BATCH)))
    used = _used_us(echo.pid) - before

    metered = sum(a.cpu_time_us for a in answers)
    assert used >= BATCH * BATCH_BURN_MS * 1000 * 0.9
    assert abs(metered - used) <= 0.20 * used, (metered, used)
    # Conservation: the shares are exactly what the process used while any call was in flight.
    assert accountant.in_flight == 0
    assert metered == accountant.billed_cpu_us - billed_before
    assert metered == accountant.busy_cpu_us - busy_before
    # They overlapped: shares, not each one the process's whole delta (the old 16x), and
    # memory not measured rather than a figure that is not theirs.
    assert {a.cpu_metering for a in answers} == {Metering.APPORTIONED}
    assert {a.peak_memory_metering for a in answers} == {Metering.NOT_MEASURED}
    assert {a.peak_memory_bytes for a in answers} == {0}
    assert max(a.cpu_time_us for a in answers) < used


async def test_a_failed_call_still_takes_its_share(echo: DServiceProcess) -> None:
    """A call that ends in an error (here, a DService answer the client refuses) leaves the
    accountant balanced: nothing is left in flight to inflate the next call's share."""
    assert echo.meter is not None
    with pytest.raises(Exception, match="failed"):
        await echo.call("GET", "/", "", [("X-Echo-Poison", b"huge-header")], b"")
    accountant = echo.meter.accountant
    assert accountant.in_flight == 0
    assert accountant.billed_cpu_us == accountant.busy_cpu_us
    answer = await _burn(echo, 0)
    assert answer.cpu_metering is Metering.ISOLATED


async def test_a_cancelled_call_reports_what_it_used_up_to_the_cancel(
    echo: DServiceProcess,
) -> None:
    """What abandoned work is billed for (SPEC 15): the call's share up to the cancel, in
    ``spent``, though the call raised CancelledError."""
    assert echo.pid is not None
    spent = Spent()
    before = _used_us(echo.pid)
    call = asyncio.create_task(
        echo.call("POST", "/burn", "", [("X-Echo-Burn-Cpu-Ms", b"2000")], b"", spent)
    )
    # Cancel once the echo has burnt a measurable share (read from outside, bounded).
    pid = echo.pid
    await until(lambda: _used_us(pid) - before >= 300_000, "300 ms of CPU burnt", timeout_s=10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert spent.ended
    assert spent.cpu_metering is Metering.ISOLATED
    # At least the 300 ms seen burnt before the cancel (less two 10 ms ticks), far from all 2 s.
    assert 280_000 <= spent.cpu_time_us < 1_500_000, spent
    assert spent.wall_time_us >= spent.cpu_time_us
