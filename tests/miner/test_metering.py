"""The apportioning rule (miner/metering.py) with scripted CPU readings, and the /proc readers
(miner/_proc.py) on real processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miner._proc import CLOCK_TICKS_PER_S, PeakRss, ProcessTreeCpu
from miner.metering import CpuAccountant, Ticket

TICK_US = 1_000_000 // CLOCK_TICKS_PER_S


class ScriptedCpu:
    """A process CPU clock the test moves by hand."""

    def __init__(self) -> None:
        self.us = 0
        self.reads = 0

    def read(self) -> int:
        self.reads += 1
        return self.us


def test_a_request_alone_gets_exactly_the_process_delta() -> None:
    cpu = ScriptedCpu()
    cpu.us = 5_000  # used before: not billed to anyone
    accountant = CpuAccountant(cpu.read)
    cpu.us = 7_000  # idle
    ticket = accountant.begin()
    cpu.us = 7_000 + 253_417
    assert accountant.end(ticket) == (253_417, True)
    assert accountant.idle_cpu_us == 2_000


def test_overlapping_requests_split_each_interval_equally() -> None:
    cpu = ScriptedCpu()
    accountant = CpuAccountant(cpu.read)
    a = accountant.begin()
    cpu.us = 100  # a alone: 100 to a
    b = accountant.begin()
    cpu.us = 300  # a and b: 100 each
    assert accountant.end(a) == (200, False)
    cpu.us = 500  # b alone: 200 to b, but b overlapped a, so it is not isolated
    assert accountant.end(b) == (300, False)
    assert accountant.billed_cpu_us == accountant.busy_cpu_us == 500


def test_remainders_go_to_the_next_request_to_end_so_the_sum_is_exact() -> None:
    cpu = ScriptedCpu()
    accountant = CpuAccountant(cpu.read)
    tickets = [accountant.begin() for _ in range(3)]
    cpu.us = 10  # 3 each and 1 left over
    shares = [accountant.end(t)[0] for t in tickets]
    assert shares == [4, 3, 3]
    assert sum(shares) == 10


def test_idle_cpu_between_busy_periods_is_billed_to_nobody() -> None:
    cpu = ScriptedCpu()
    accountant = CpuAccountant(cpu.read)
    first = accountant.begin()
    cpu.us = 40_000
    accountant.end(first)
    cpu.us = 90_000  # garbage collection, timers... while nothing was in flight
    second = accountant.begin()
    cpu.us = 100_000
    assert accountant.end(second) == (10_000, True)
    assert accountant.idle_cpu_us == 50_000
    assert accountant.billed_cpu_us == accountant.busy_cpu_us == 50_000


def test_a_request_is_isolated_only_if_no_other_overlapped_any_part_of_it() -> None:
    cpu = ScriptedCpu()
    accountant = CpuAccountant(cpu.read)
    long = accountant.begin()  # alone at its start...
    short = accountant.begin()  # ...but not for its whole life
    assert accountant.end(short)[1] is False
    assert accountant.end(long)[1] is False
    alone = accountant.begin()
    assert accountant.end(alone)[1] is True
    assert accountant.in_flight == 0


def test_each_event_reads_the_clock_once() -> None:
    cpu = ScriptedCpu()
    accountant = CpuAccountant(cpu.read)
    tickets = [accountant.begin() for _ in range(50)]
    for ticket in tickets:
        accountant.end(ticket)
    assert cpu.reads == 1 + 100


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.integers(min_value=0, max_value=10),
            st.integers(min_value=0, max_value=50_000),
        ),
        min_size=1,
        max_size=200,
    )
)
def test_shares_always_sum_to_the_busy_cpu(script: list[tuple[bool, int, int]]) -> None:
    """Random starts and ends with random CPU in between: every share is non-negative, a
    request alone gets exactly the process's delta, and whenever nothing is in flight the
    shares given out equal the CPU used while anything was."""
    cpu = ScriptedCpu()
    accountant = CpuAccountant(cpu.read)
    in_flight: list[tuple[Ticket, int]] = []
    for start, pick, used in script:
        cpu.us += used
        if start or not in_flight:
            in_flight.append((accountant.begin(), cpu.us))
            continue
        ticket, started_at = in_flight.pop(pick % len(in_flight))
        share, isolated = accountant.end(ticket)
        assert share >= 0
        if isolated:
            assert share == cpu.us - started_at
        if not in_flight:
            assert accountant.billed_cpu_us == accountant.busy_cpu_us
    for ticket, _ in in_flight:
        accountant.end(ticket)
    assert accountant.billed_cpu_us == accountant.busy_cpu_us
    assert accountant.busy_cpu_us + accountant.idle_cpu_us == cpu.us


# The /proc readers, on real processes.

_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE)
print(child.pid, flush=True)
sys.stdin.readline()  # the test read the tree with the child alive
child.stdin.close()
child.wait()  # reaped: its CPU moves into our cutime
print("reaped", flush=True)
sys.stdin.readline()
"""

_BURNING_CHILD = """
import sys, time
deadline = time.process_time() + 0.2
while time.process_time() < deadline:
    sum(range(1000))
print("burnt", flush=True)  # on the parent's stdout, which it inherited
sys.stdin.read()
"""


def _total_cpu_us(pid: int) -> int:
    times = psutil.Process(pid).cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    return int(total * 1_000_000)


#: The same parent, its child forked by a second thread: the tree is then searched through
#: every thread's ``children`` file rather than the main thread's alone.
_THREADED_PARENT = (
    f"import threading\nthreading.Thread(target=exec, args=({_PARENT!r}, {{}})).start()"
)


@pytest.fixture(params=[_PARENT, _THREADED_PARENT], ids=["main-thread", "other-thread"])
def parent(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-c", request.param, _BURNING_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            yield process
        finally:
            process.kill()  # the child sees its stdin close and ends too


def test_the_tree_counts_live_children_and_those_it_waited_for(
    parent: subprocess.Popen[str],
) -> None:
    assert parent.stdin is not None
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert parent.stdout.readline() == "burnt\n"
    tree = ProcessTreeCpu(parent.pid)
    try:
        tree.rescan()
        assert not tree.single
        alive = tree.read_us()
        outside = _total_cpu_us(parent.pid) + _total_cpu_us(child)
        assert abs(alive - outside) <= 4 * TICK_US, (alive, outside)
        assert alive >= 200_000
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "reaped\n"
        reaped = tree.read_us()
        assert tree.single  # the dead child was dropped
        assert reaped >= alive  # never decreases
        assert abs(reaped - _total_cpu_us(parent.pid)) <= 4 * TICK_US
    finally:
        tree.close()


def test_peak_memory_resets_to_the_current_size() -> None:
    script = "import sys\nfor line in sys.stdin:\n    b = bytearray(int(line) << 20)\n    del b\n"
    script += "    print('done', flush=True)\n"
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        _check_peak_reset(process)


def _check_peak_reset(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    assert process.stdout is not None
    peak = PeakRss(process.pid)
    try:
        process.stdin.write("64\n")
        process.stdin.flush()
        assert process.stdout.readline() == "done\n"
        first = peak.read()
        assert first is not None
        assert first >= 64 << 20
        assert peak.reset()
        process.stdin.write("16\n")
        process.stdin.flush()
        assert process.stdout.readline() == "done\n"
        second = peak.read()
        assert second is not None
        assert 16 << 20 <= second < first - (32 << 20)
    finally:
        peak.close()
        process.kill()
