"""What one CPUcoin buys (SPEC section 9): R(N) = R(0) * K**N, N = whole GMT days since
2019-01-31, in the wad fixed point of :mod:`settlement.fixed_point`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cgn_common.errors import InvalidArgumentError
from settlement.fixed_point import K_WAD, WAD, format_wad, mul_wad, pow_wad

#: Day 0 of the resource definition: 2019-01-31 00:00 GMT.
DAY_ZERO = datetime(2019, 1, 31, tzinfo=UTC)


@dataclass(frozen=True)
class ResourceAmounts:
    """An amount of each resource CPUcoin stands for, each in wad of its unit."""

    #: CPU: KMIPS-hours (one hour of one thread running a billion instructions a second).
    cpu_kmips_hours: int
    #: GPU: TFLOP-hours (one hour of one teraFLOPS of GPU power).
    gpu_tflop_hours: int
    #: Bandwidth: gigabytes (10**9 bytes) sent or received.
    bandwidth_gb: int

    def __post_init__(self) -> None:
        for name in ("cpu_kmips_hours", "gpu_tflop_hours", "bandwidth_gb"):
            if getattr(self, name) <= 0:
                raise InvalidArgumentError(f"{name} must be positive")

    def scaled(self, factor_wad: int) -> ResourceAmounts:
        """Each amount times a wad factor, rounded half up."""
        return ResourceAmounts(
            cpu_kmips_hours=mul_wad(self.cpu_kmips_hours, factor_wad),
            gpu_tflop_hours=mul_wad(self.gpu_tflop_hours, factor_wad),
            bandwidth_gb=mul_wad(self.bandwidth_gb, factor_wad),
        )


#: R(0), what one CPUcoin bought on day 0: the paper's equivalency table is the definition
#: (3290.4 KMIPS-hours, 3.08 TFLOP-hours, 11.4 GB), not its per-unit euro costs.
R0 = ResourceAmounts(
    cpu_kmips_hours=3_290_400_000_000_000_000_000,
    gpu_tflop_hours=3_080_000_000_000_000_000,
    bandwidth_gb=11_400_000_000_000_000_000,
)


def day_number(at: datetime) -> int:
    """N for an instant: whole GMT days since 2019-01-31 00:00 GMT (SPEC section 15)."""
    if at.tzinfo is None:
        raise InvalidArgumentError("a naive datetime has no GMT day; give it a time zone")
    elapsed = at - DAY_ZERO
    if elapsed < timedelta(0):
        raise InvalidArgumentError(f"{at.isoformat()} is before day 0 of CPUcoin (2019-01-31)")
    return elapsed.days


@dataclass(frozen=True)
class ResourceEpoch:
    """One stretch of the schedule: from ``start_day`` on, R(N) = base * k**(N - start_day)."""

    start_day: int
    #: R(start_day).
    base: ResourceAmounts
    #: The daily factor in wad (at least 1.0).
    k_wad: int = K_WAD

    def __post_init__(self) -> None:
        if self.start_day < 0:
            raise InvalidArgumentError("an epoch cannot start before day 0")
        if self.k_wad < WAD:
            raise InvalidArgumentError("the daily factor K must be at least 1.0")

    def at(self, day: int) -> ResourceAmounts:
        """R(day), for a day in this epoch."""
        if day < self.start_day:
            raise InvalidArgumentError(f"day {day} is before this epoch (day {self.start_day})")
        return self.base.scaled(pow_wad(self.k_wad, day - self.start_day))


@dataclass(frozen=True)
class ResourceSchedule:
    """R(N) for every day: the paper's single curve, plus administrative updates that start
    on a future day and never change a past one (SPEC sections 9 and 10)."""

    epochs: tuple[ResourceEpoch, ...] = (ResourceEpoch(0, R0),)

    def __post_init__(self) -> None:
        if not self.epochs or self.epochs[0].start_day != 0:
            raise InvalidArgumentError("the schedule must start with an epoch on day 0")
        starts = [e.start_day for e in self.epochs]
        if starts != sorted(set(starts)):
            raise InvalidArgumentError("epochs must start on strictly increasing days")

    def resources(self, day: int) -> ResourceAmounts:
        """R(day): what one CPUcoin buys on GMT day ``day``."""
        if day < 0:
            raise InvalidArgumentError(f"day {day} is before day 0")
        epoch = next(e for e in reversed(self.epochs) if e.start_day <= day)
        return epoch.at(day)

    def updated(
        self, *, today: int, start_day: int, k_wad: int, base: ResourceAmounts | None = None
    ) -> ResourceSchedule:
        """A schedule whose coefficients change from ``start_day``, which must be after
        ``today``. Without ``base`` the curve stays continuous: R(start_day) is kept."""
        if start_day <= today:
            raise InvalidArgumentError("coefficients change for the future only")
        if start_day <= self.epochs[-1].start_day:
            raise InvalidArgumentError("an update must start after the last epoch")
        new_base = self.resources(start_day) if base is None else base
        return ResourceSchedule((*self.epochs, ResourceEpoch(start_day, new_base, k_wad)))


#: The columns of the paper's table "CPUcoin resources equivalency, adjusted over time":
#: (label, days). A month is 30 days, three months 90, a year 365.
PAPER_TABLE_DAYS: tuple[tuple[str, int], ...] = (
    ("day 0", 0),
    ("after 1 day", 1),
    ("after 1 week", 7),
    ("after 1 month", 30),
    ("after 3 months", 90),
    ("after 1 year", 365),
    ("after 2 years", 730),
)

#: Per resource: (name, unit, attribute, decimals the paper prints).
_TABLE_ROWS = (
    ("CPU", "KMIPS-hrs", "cpu_kmips_hours", 1),
    ("GPU", "TFLOP-hrs", "gpu_tflop_hours", 2),
    ("Bandwidth", "Gigabytes", "bandwidth_gb", 1),
)


def equivalency_table(
    schedule: ResourceSchedule | None = None,
    columns: Sequence[tuple[str, int]] = PAPER_TABLE_DAYS,
) -> list[list[str]]:
    """The paper's equivalency table as rows of strings (a header row first), each amount
    rounded half up to the paper's printed precision."""
    schedule = schedule or ResourceSchedule()
    amounts = [schedule.resources(day) for _, day in columns]
    table = [["Resource", "Unit", *(f"Amount ({label})" for label, _ in columns)]]
    for name, unit, attribute, decimals in _TABLE_ROWS:
        cells = [format_wad(getattr(a, attribute), decimals) for a in amounts]
        table.append([name, unit, *cells])
    return table


def format_equivalency_table(schedule: ResourceSchedule | None = None) -> str:
    """The equivalency table as aligned text, for people."""
    rows = equivalency_table(schedule)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)
