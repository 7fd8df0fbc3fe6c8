"""Benchmark what metering costs one request in the process runtime, before and after honest
metering (docs/metering.md).

Usage (from the repository root)::

    .venv/bin/python bench/metering.py [--loops 20000]

It starts the echo DService through ``ProcessRuntime``, as the miner does, and times in this
process, ``--loops`` times each, the metering work of one request against the idle echo
process (the HTTP call itself excluded):

* ``before``: what ``DServiceProcess.call`` did until honest metering: psutil ``cpu_times()``
  at the start and at the end, and an ``open`` and read of ``/proc/<pid>/status`` for VmHWM;
* ``after, alone``: ``ProcessMeter.begin`` + ``end`` for a request alone, the most expensive
  case: a search for descendants (the start of a busy period), the peak-memory reset, two CPU
  readings and a read of the peak;
* ``after, 16 overlapping``: 16 begins then 16 ends, per request (two CPU readings, and a
  search for descendants once per busy period).

Then, for scale, the p50 of a whole call of echo (an empty GET) through ``DServiceProcess.call``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miner.metering import ProcessMeter
from miner.runtime import ProcessRuntime


def _per_loop_us(fn: Callable[[], object], loops: int) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - started) / loops * 1e6


def _before(process: psutil.Process, pid: int) -> None:
    """The metering of one request as it was (2 psutil readings, one VmHWM read)."""
    times = process.cpu_times()
    int((times.user + times.system) * 1_000_000)
    times = process.cpu_times()
    int((times.user + times.system) * 1_000_000)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                int(line.split()[1])
                break


def _after_alone(meter: ProcessMeter) -> None:
    meter.end(meter.begin())


def _after_overlapping(meter: ProcessMeter, n: int) -> Callable[[], None]:
    def run() -> None:
        tickets = [meter.begin() for _ in range(n)]
        for ticket in tickets:
            meter.end(ticket)

    return run


async def bench(loops: int) -> list[tuple[str, float]]:
    runtime = ProcessRuntime(["echo"])
    await runtime.start()
    try:
        echo = runtime.get("echo")
        assert echo.pid is not None
        pid = echo.pid
        meter = ProcessMeter(pid)  # a second meter of the same process, for this bench only
        try:
            process = psutil.Process(pid)  # made once per spawn, as it was
            rows = [
                ("before: psutil x2 + VmHWM", _per_loop_us(lambda: _before(process, pid), loops)),
                ("after: alone", _per_loop_us(lambda: _after_alone(meter), loops)),
                (
                    "after: 16 overlapping, per request",
                    _per_loop_us(_after_overlapping(meter, 16), loops // 16) / 16,
                ),
            ]
        finally:
            meter.close()
        calls = []
        for _ in range(2000):
            started = time.perf_counter()
            await echo.call("GET", "/", "", [], b"")
            calls.append((time.perf_counter() - started) * 1e6)
        rows.append(("whole echo call, p50 (for scale)", statistics.median(calls)))
        return rows
    finally:
        await runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--loops", type=int, default=20_000)
    args = parser.parse_args()
    rows = asyncio.run(bench(args.loops))
    width = max(len(name) for name, _ in rows)
    print(f"{'metering of one request':<{width}}  µs")
    for name, us in rows:
        print(f"{name:<{width}}  {us:6.1f}")


if __name__ == "__main__":
    main()
