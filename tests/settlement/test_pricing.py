"""The fee of one work unit, and the worked example of docs/pricing.md."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgn_common.errors import InvalidArgumentError, NotFoundError
from settlement.fixed_point import K_WAD, format_wad, pow_wad
from settlement.hardware import MinerBenchmark
from settlement.money import ATTO_PER_TOKEN, FiatAmount
from settlement.pricing import MeteredUsage, PricingTables, price_work
from settlement.rates import Rate
from settlement.resources import ResourceSchedule, day_number
from settlement.service_levels import (
    BASIC,
    PERFORMANCE,
    STANDARD,
    LevelPrice,
    PriceList,
    ServiceLevel,
    default_price_list,
)
from settlement.split import DEFAULT_FEE_AGREEMENT, CharityChoices, Payouts, split_fee

DOC = Path(__file__).resolve().parents[2] / "docs" / "pricing.md"
FINISHED = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
RATE = Rate("EUR", 50_000_000, datetime(2025, 6, 1, 11, 59, 30, tzinfo=UTC), "sandbox")
TABLES = PricingTables(default_price_list("EUR"))
MINER = MinerBenchmark.from_fitness(cpu_kmips=160, cpu_threads=8)
USAGE = MeteredUsage(cpu_time_us=60_000_000, bytes_in=200_000, bytes_out=1_800_000)


def test_the_worked_example_of_the_doc() -> None:
    day = day_number(FINISHED)
    price = price_work(USAGE, MINER, STANDARD, day, RATE, TABLES)
    payouts = split_fee(
        price.fee_atto,
        DEFAULT_FEE_AGREEMENT,
        CharityChoices(contributor_ppm=100_000, operator_ppm=50_000),
    )
    figures = {
        "N": day,
        "K^N": pow_wad(K_WAD, day),
        "R_cpu": price.resources.cpu_kmips_hours,
        "R_gpu": price.resources.gpu_tflop_hours,
        "R_bw": price.resources.bandwidth_gb,
        "mips": MINER.cpu_mips_per_thread,
        "h_cpu": price.cpu_multiplier_ppm,
        "L": price.level_multiplier_ppm,
        "metered_atto": price.metered_atto,
        "fiat_nano": price.fee_fiat.nano,
        "fee_atto": price.fee_atto,
        "contributor": payouts.contributor,
        "contributor_charity": payouts.contributor_charity,
        "developer": payouts.developer,
        "developer_charity": payouts.developer_charity,
        "operator": payouts.operator,
        "operator_charity": payouts.operator_charity,
    }
    assert figures == {
        "N": 2313,
        "K^N": 8_991_072_081_298_880_553,
        "R_cpu": 29_584_223_576_305_836_571_591,
        "R_gpu": 27_692_502_010_400_552_103,
        "R_bw": 102_498_221_726_807_238_304,
        "mips": 20_000,
        "h_cpu": 1_100_000,
        "L": 1_000_000,
        "metered_atto": 31_906_526_873_242,
        "fiat_nano": 1_595,
        "fee_atto": 31_900_000_000_000,
        "contributor": 20_097_000_000_000,
        "contributor_charity": 2_233_000_000_000,
        "developer": 6_380_000_000_000,
        "developer_charity": 0,
        "operator": 3_030_500_000_000,
        "operator_charity": 159_500_000_000,
    }
    assert payouts.total == price.fee_atto
    assert price.rate == RATE
    # The doc prints each figure in the table of its worked example, as `name` | `value`.
    documented = dict(re.findall(r"^\| `([\w^]+)` \| `([\d_]+)` \|", DOC.read_text(), re.M))
    assert {k: int(v) for k, v in documented.items()} == figures


def test_the_example_agrees_with_floating_point() -> None:
    # Floats only to compare: 60 s at 20,000 MIPS = 1/3 KMIPS-hour, x1.1; 2 MB = 0.002 GB.
    r = ResourceSchedule().resources(2313)
    coins = (1 / 3 * 1.1) / (r.cpu_kmips_hours / 1e18) + 0.002 / (r.bandwidth_gb / 1e18)
    price = price_work(USAGE, MINER, STANDARD, 2313, RATE, TABLES)
    assert price.metered_atto / ATTO_PER_TOKEN == pytest.approx(coins, rel=1e-12)
    assert format_wad(price.fee_atto, 7) == "0.0000319"


usages = st.builds(
    MeteredUsage,
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
)


@given(usages, usages, st.integers(0, 20_000))
def test_more_usage_never_costs_less(a: MeteredUsage, b: MeteredUsage, day: int) -> None:
    more = MeteredUsage(
        a.cpu_time_us + b.cpu_time_us,
        a.gpu_time_us + b.gpu_time_us,
        a.bytes_in + b.bytes_in,
        a.bytes_out + b.bytes_out,
    )
    miner = MinerBenchmark(12_345, 9_000)
    small = price_work(a, miner, STANDARD, day, RATE, TABLES)
    large = price_work(more, miner, STANDARD, day, RATE, TABLES)
    assert small.metered_atto <= large.metered_atto
    assert small.fee_fiat.nano <= large.fee_fiat.nano
    assert small.fee_atto <= large.fee_atto <= large.metered_atto


@given(usages, st.integers(0, 20_000))
def test_the_token_fee_is_the_fiat_fee_at_the_stored_rate(usage: MeteredUsage, day: int) -> None:
    price = price_work(usage, MINER, STANDARD, day, RATE, TABLES)
    # What the daily rollup repeats with the row's rate (SPEC section 10, step 1).
    assert price.fee_atto == price.fee_fiat.nano * ATTO_PER_TOKEN // RATE.nano_per_token


def test_the_same_work_buys_more_later() -> None:
    early = price_work(USAGE, MINER, STANDARD, 0, RATE, TABLES)
    late = price_work(USAGE, MINER, STANDARD, 730, RATE, TABLES)
    assert late.metered_atto * 2 == pytest.approx(early.metered_atto, abs=2)


def test_levels_order_and_price() -> None:
    assert BASIC < STANDARD < PERFORMANCE
    prices = [price_work(USAGE, MINER, level, 10, RATE, TABLES) for level in (BASIC, PERFORMANCE)]
    standard = price_work(USAGE, MINER, STANDARD, 10, RATE, TABLES)
    assert prices[0].metered_atto < standard.metered_atto < prices[1].metered_atto
    assert STANDARD.admits(threads=2, cpu_kmips=20, bandwidth_kbps=10_000)
    assert not STANDARD.admits(threads=1, cpu_kmips=20, bandwidth_kbps=10_000)


def test_a_request_fee_is_added_in_fiat() -> None:
    flat = PricingTables(PriceList("EUR", {"standard": LevelPrice(request_fee_nano=1_000)}))
    plain = price_work(USAGE, MINER, STANDARD, 2313, RATE, TABLES)
    with_fee = price_work(USAGE, MINER, STANDARD, 2313, RATE, flat)
    assert with_fee.fee_fiat == FiatAmount(plain.fee_fiat.nano + 1_000, "EUR")
    assert flat.prices.request_fee(STANDARD) == FiatAmount(1_000, "EUR")


def test_a_gpu_is_billed_by_its_speed() -> None:
    gpu_miner = MinerBenchmark(10_000, gpu_gflops=15_700)
    price = price_work(
        MeteredUsage(gpu_time_us=3_600_000_000), gpu_miner, STANDARD, 0, RATE, TABLES
    )
    # One hour of the reference GPU is 15.7 TFLOP-hours; one coin buys 3.08 on day 0.
    assert price.gpu_multiplier_ppm == 1_000_000
    assert price.metered_atto == 15_700 * ATTO_PER_TOKEN // 3_080


def test_free_work_costs_nothing() -> None:
    price = price_work(MeteredUsage(), MINER, STANDARD, 100, RATE, TABLES)
    assert (price.metered_atto, price.fee_fiat.nano, price.fee_atto) == (0, 0, 0)
    assert split_fee(price.fee_atto) == Payouts(0, 0, 0, 0, 0, 0)


def test_the_rate_must_be_in_the_price_lists_currency() -> None:
    usd = Rate("USD", 60_000_000, RATE.observed_at, "sandbox")
    with pytest.raises(InvalidArgumentError, match="EUR"):
        price_work(USAGE, MINER, STANDARD, 10, usd, TABLES)


def test_an_unpriced_level_is_not_found() -> None:
    secret = ServiceLevel(9, "secret", min_threads=1, min_cpu_kmips=1, min_bandwidth_kbps=1)
    with pytest.raises(NotFoundError):
        price_work(USAGE, MINER, secret, 10, RATE, TABLES)


def test_negative_usage_is_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        MeteredUsage(cpu_time_us=-1)
