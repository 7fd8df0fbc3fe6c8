"""A quick fitness test (SPEC section 7): CPU speed, threads and memory."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_LOOP = 200_000
#: Rough machine instructions per iteration of the Python loop below (calibrated once on
#: x86-64 CPython 3.11 with perf; only the order of magnitude matters until the pricing issue).
_INSTRUCTIONS_PER_ITERATION = 60


@dataclass(frozen=True)
class FitnessResult:
    """What the fitness test found."""

    cpu_kmips: int
    cpu_threads: int
    memory_bytes: int
    duration_us: int


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_fitness_test() -> FitnessResult:
    """Runs the test (about 20 ms)."""
    started = time.perf_counter()
    x = 0
    for i in range(_LOOP):
        x ^= i * 7
    elapsed = max(time.perf_counter() - started, 1e-6)
    threads = os.cpu_count() or 1
    mips_per_thread = _LOOP * _INSTRUCTIONS_PER_ITERATION / elapsed / 1e6
    return FitnessResult(
        cpu_kmips=max(1, int(mips_per_thread * threads / 1000)),
        cpu_threads=threads,
        memory_bytes=_memory_bytes(),
        duration_us=int(elapsed * 1e6),
    )
