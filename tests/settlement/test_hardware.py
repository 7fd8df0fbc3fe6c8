"""Premium and discount tables: exact at their points, monotonic, clamped at the ends."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cgn_common.errors import InvalidArgumentError
from settlement.hardware import (
    DEFAULT_CPU_TABLE,
    DEFAULT_GPU_TABLE,
    MinerBenchmark,
    RatioTable,
    score_ppm,
)


@st.composite
def monotonic_tables(draw: st.DrawFn, *, increasing: bool = True) -> RatioTable:
    """A table with strictly increasing scores and monotonic multipliers."""
    scores = sorted(draw(st.sets(st.integers(0, 10_000_000), min_size=1, max_size=8)))
    multipliers = sorted(
        draw(st.lists(st.integers(0, 5_000_000), min_size=len(scores), max_size=len(scores))),
        reverse=not increasing,
    )
    return RatioTable(tuple(zip(scores, multipliers, strict=True)))


@given(monotonic_tables())
def test_the_table_is_exact_at_its_points(table: RatioTable) -> None:
    for score, multiplier in table.points:
        assert table.lookup(score) == multiplier


@given(
    st.booleans().flatmap(lambda up: st.tuples(st.just(up), monotonic_tables(increasing=up))),
    st.integers(0, 12_000_000),
    st.integers(0, 12_000_000),
)
def test_interpolation_is_monotonic_for_a_monotonic_table(
    case: tuple[bool, RatioTable], a: int, b: int
) -> None:
    increasing, table = case
    assume(a != b)
    low, high = min(a, b), max(a, b)
    if increasing:
        assert table.lookup(low) <= table.lookup(high)
    else:
        assert table.lookup(low) >= table.lookup(high)


@given(monotonic_tables(), st.integers(0, 12_000_000))
def test_interpolation_stays_between_its_neighbours(table: RatioTable, score: int) -> None:
    multipliers = [m for _, m in table.points]
    assert min(multipliers) <= table.lookup(score) <= max(multipliers)


def test_interpolation_is_linear_and_clamped() -> None:
    assert DEFAULT_CPU_TABLE.lookup(1_000_000) == 1_000_000
    assert DEFAULT_CPU_TABLE.lookup(1_500_000) == 1_050_000
    assert DEFAULT_CPU_TABLE.lookup(750_000) == 950_000
    # One third of the way from 0.5 to 1.0 is 0.9 + 0.1/3, rounded down.
    assert DEFAULT_CPU_TABLE.lookup(666_666) == 933_333
    assert DEFAULT_CPU_TABLE.lookup(0) == 800_000
    assert DEFAULT_CPU_TABLE.lookup(100_000_000) == 1_200_000
    assert DEFAULT_GPU_TABLE.lookup(2_500_000) == 1_075_000


def test_a_decreasing_segment_rounds_down_too() -> None:
    table = RatioTable(((0, 10), (3, 0)))
    assert [table.lookup(x) for x in range(4)] == [10, 6, 3, 0]


@pytest.mark.parametrize("points", [(), ((1, 1), (1, 2)), ((2, 1), (1, 2)), ((-1, 1),), ((1, -1),)])
def test_bad_tables_are_refused(points: tuple[tuple[int, int], ...]) -> None:
    with pytest.raises(InvalidArgumentError):
        RatioTable(points)


def test_benchmark_from_the_fitness_report() -> None:
    assert MinerBenchmark.from_fitness(160, 8) == MinerBenchmark(20_000, 0)
    assert MinerBenchmark.from_fitness(0, 8).cpu_mips_per_thread == 1
    assert score_ppm(20_000, 10_000) == 2_000_000
