"""The fee of one work unit (SPEC section 15, "Money and fees"): metered usage times the
hardware premium or discount gives resource units; R(day) turns them into CPUcoin; the
service level's price applies; the row's rate turns that into fiat, and the fiat back into
the CPUcoin amount that is split and paid. docs/pricing.md has the formula and an example.

Not here yet (a later issue): price caps with the estimator's downgrade to a lower level or
to discounted heavily loaded miners, subsidy modes (cap covered, full subsidy) and daily
subscriptions. They change what the enterprise is charged, never the fee computed here:
payouts are always computed on the actual cost (SPEC section 15).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from cgn_common.errors import InvalidArgumentError
from settlement.fixed_point import WAD
from settlement.hardware import (
    DEFAULT_CPU_TABLE,
    DEFAULT_GPU_TABLE,
    MinerBenchmark,
    RatioTable,
    ReferenceHardware,
    score_ppm,
)
from settlement.money import ATTO_PER_TOKEN, PPM, FiatAmount, check_amount
from settlement.rates import Rate
from settlement.resources import ResourceAmounts, ResourceSchedule
from settlement.service_levels import PriceList, ServiceLevel

#: MIPS-microseconds in one KMIPS-hour: 1000 MIPS for 3600 * 10**6 us.
MIPS_US_PER_KMIPS_HOUR = 1000 * 3_600_000_000
#: GFLOPS-microseconds in one TFLOP-hour: 1000 GFLOPS for 3600 * 10**6 us.
GFLOPS_US_PER_TFLOP_HOUR = 1000 * 3_600_000_000
#: Bytes in one gigabyte (SI: 10**9).
BYTES_PER_GB = 10**9


@dataclass(frozen=True)
class MeteredUsage:
    """What one work unit used, as the miner metered it. Wall time and memory are not billed
    (SPEC section 15 bills CPU, GPU and bytes)."""

    #: CPU time of the DService over all its threads, in microseconds.
    cpu_time_us: int = 0
    #: GPU time, in microseconds.
    gpu_time_us: int = 0
    #: Request bytes delivered to the DService.
    bytes_in: int = 0
    #: Response bytes the DService produced.
    bytes_out: int = 0

    def __post_init__(self) -> None:
        for name in ("cpu_time_us", "gpu_time_us", "bytes_in", "bytes_out"):
            check_amount(name, getattr(self, name))


@dataclass(frozen=True)
class PricingTables:
    """Everything pricing reads besides the work itself: the resource schedule, the premium
    tables, the reference hardware and the fiat price list."""

    prices: PriceList
    schedule: ResourceSchedule = field(default_factory=ResourceSchedule)
    cpu_table: RatioTable = DEFAULT_CPU_TABLE
    gpu_table: RatioTable = DEFAULT_GPU_TABLE
    reference: ReferenceHardware = field(default_factory=ReferenceHardware)


@dataclass(frozen=True)
class WorkPrice:
    """The price of one work unit and every figure it came from, for the ledger row."""

    #: N: whole GMT days since 2019-01-31.
    day: int
    #: R(N): what one CPUcoin bought that day.
    resources: ResourceAmounts
    #: The CPU and GPU premium (above 1_000_000) or discount (below), in ppm.
    cpu_multiplier_ppm: int
    gpu_multiplier_ppm: int
    #: The service level and its price multiplier (ppm).
    level: str
    level_multiplier_ppm: int
    #: The metered resource cost in atto-CPUcoin, before the rate (rounded down).
    metered_atto: int
    #: The fee in fiat: the metered cost at the rate plus the level's fixed fee (rounded down).
    fee_fiat: FiatAmount
    #: The fee in atto-CPUcoin: ``fee_fiat`` at the rate (rounded down). This is what is split.
    fee_atto: int
    #: The rate used; the row stores it and every later conversion of the row uses it.
    rate: Rate


def coin_value(
    cpu_mips_us: int,
    gpu_gflops_us: int,
    data_bytes: int,
    resources: ResourceAmounts,
    cpu_multiplier_ppm: int,
    gpu_multiplier_ppm: int,
) -> Fraction:
    """The exact CPUcoin value of an amount of work on a day when one coin buys
    ``resources``: for each resource, amount used * multiplier / amount per coin."""
    cpu = Fraction(
        cpu_mips_us * cpu_multiplier_ppm * WAD,
        MIPS_US_PER_KMIPS_HOUR * PPM * resources.cpu_kmips_hours,
    )
    gpu = Fraction(
        gpu_gflops_us * gpu_multiplier_ppm * WAD,
        GFLOPS_US_PER_TFLOP_HOUR * PPM * resources.gpu_tflop_hours,
    )
    data = Fraction(data_bytes * WAD, BYTES_PER_GB * resources.bandwidth_gb)
    return cpu + gpu + data


def price_work(
    usage: MeteredUsage,
    miner: MinerBenchmark,
    level: ServiceLevel,
    day: int,
    rate: Rate,
    tables: PricingTables,
) -> WorkPrice:
    """Prices one finished work unit. ``usage`` is what is billable (a caller bills abandoned
    work for what it used until the cancel and does not price failed work: SPEC section 15).
    """
    if rate.currency != tables.prices.currency:
        raise InvalidArgumentError(
            f"the price list is in {tables.prices.currency}, the rate in {rate.currency}"
        )
    # TODO(price caps, subsidies, subscriptions): a cap asks the DService's estimator and may
    # re-price at a lower level before the work runs; subsidy and subscription plans decide
    # what the enterprise is charged from this WorkPrice, while payouts stay on fee_atto.
    resources = tables.schedule.resources(day)
    ref = tables.reference
    cpu_multiplier = tables.cpu_table.lookup(
        score_ppm(miner.cpu_mips_per_thread, ref.cpu_mips_per_thread)
    )
    gpu_multiplier = tables.gpu_table.lookup(score_ppm(miner.gpu_gflops, ref.gpu_gflops))
    price = tables.prices.price(level)
    # CPU time counts thread-seconds; the miner's speed per thread turns it into instructions.
    value = coin_value(
        usage.cpu_time_us * miner.cpu_mips_per_thread,
        usage.gpu_time_us * miner.gpu_gflops,
        usage.bytes_in + usage.bytes_out,
        resources,
        cpu_multiplier,
        gpu_multiplier,
    )
    metered_atto = value * ATTO_PER_TOKEN * price.multiplier_ppm // PPM
    fiat_nano = metered_atto * rate.nano_per_token // ATTO_PER_TOKEN + price.request_fee_nano
    fee_atto = fiat_nano * ATTO_PER_TOKEN // rate.nano_per_token
    return WorkPrice(
        day=day,
        resources=resources,
        cpu_multiplier_ppm=cpu_multiplier,
        gpu_multiplier_ppm=gpu_multiplier,
        level=level.name,
        level_multiplier_ppm=price.multiplier_ppm,
        metered_atto=check_amount("the metered cost", metered_atto),
        fee_fiat=FiatAmount(fiat_nano, rate.currency),
        fee_atto=check_amount("the fee", fee_atto),
        rate=rate,
    )
