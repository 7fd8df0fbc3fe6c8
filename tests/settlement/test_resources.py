"""R(N): the paper's equivalency table is the test vector (SPEC section 15)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cgn_common.errors import InvalidArgumentError
from settlement.fixed_point import K_WAD, WAD
from settlement.resources import (
    R0,
    ResourceAmounts,
    ResourceSchedule,
    day_number,
    equivalency_table,
    format_equivalency_table,
)

#: "CPUcoin resources equivalency, adjusted over time", as the white paper prints it.
PAPER_TABLE = [
    ["CPU", "KMIPS-hrs", "3290.4", "3293.5", "3312.3", "3385.5", "3584.0", "4653.3", "6580.8"],
    ["GPU", "TFLOP-hrs", "3.08", "3.08", "3.10", "3.17", "3.35", "4.36", "6.16"],
    ["Bandwidth", "Gigabytes", "11.4", "11.4", "11.5", "11.7", "12.4", "16.1", "22.8"],
]


def test_the_papers_equivalency_table_is_reproduced_to_its_printed_precision() -> None:
    table = equivalency_table()
    assert table[0][2:] == [
        "Amount (day 0)",
        "Amount (after 1 day)",
        "Amount (after 1 week)",
        "Amount (after 1 month)",
        "Amount (after 3 months)",
        "Amount (after 1 year)",
        "Amount (after 2 years)",
    ]
    assert table[1:] == PAPER_TABLE


def test_the_table_prints() -> None:
    text = format_equivalency_table()
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[1].split() == PAPER_TABLE[0]
    assert all(line == line.rstrip() for line in lines)


def test_the_table_agrees_with_floating_point_to_the_printed_precision() -> None:
    # Floats only to compare: R(0) * 2**(N/730) rounded as the paper rounds it.
    schedule = ResourceSchedule()
    for day in (0, 1, 7, 30, 90, 365, 730, 1000, 3650):
        r = schedule.resources(day)
        factor = 2 ** (day / 730)
        assert r.cpu_kmips_hours / WAD == pytest.approx(3290.4 * factor, rel=1e-12)
        assert r.gpu_tflop_hours / WAD == pytest.approx(3.08 * factor, rel=1e-12)
        assert r.bandwidth_gb / WAD == pytest.approx(11.4 * factor, rel=1e-12)


@pytest.mark.parametrize(
    ("at", "day"),
    [
        (datetime(2019, 1, 31, tzinfo=UTC), 0),
        (datetime(2019, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC), 0),
        (datetime(2019, 2, 1, tzinfo=UTC), 1),
        (datetime(2021, 1, 30, tzinfo=UTC), 730),
        # 01:00 at UTC+2 is still the previous GMT day.
        (datetime(2019, 2, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))), 0),
    ],
)
def test_day_number_counts_whole_gmt_days(at: datetime, day: int) -> None:
    assert day_number(at) == day


def test_day_number_refuses_naive_and_early_times() -> None:
    with pytest.raises(InvalidArgumentError):
        day_number(datetime(2020, 1, 1))  # naive on purpose
    with pytest.raises(InvalidArgumentError):
        day_number(datetime(2019, 1, 30, 23, 59, tzinfo=UTC))


def test_an_update_changes_the_future_only() -> None:
    schedule = ResourceSchedule()
    faster = schedule.updated(today=100, start_day=101, k_wad=2 * K_WAD - WAD)
    for day in (0, 50, 100):
        assert faster.resources(day) == schedule.resources(day)
    # Continuous at the switch, then the new K.
    assert faster.resources(101) == schedule.resources(101)
    assert faster.resources(102).cpu_kmips_hours > schedule.resources(102).cpu_kmips_hours
    with pytest.raises(InvalidArgumentError, match="future"):
        schedule.updated(today=100, start_day=100, k_wad=K_WAD)


def test_an_update_may_set_a_new_base() -> None:
    base = ResourceAmounts(5000 * WAD, 4 * WAD, 12 * WAD)
    schedule = ResourceSchedule().updated(today=10, start_day=20, k_wad=WAD, base=base)
    assert schedule.resources(19) == ResourceSchedule().resources(19)
    assert schedule.resources(20) == base
    assert schedule.resources(9999) == base  # K = 1.0: no more adjustment
    assert schedule.resources(0) == R0
