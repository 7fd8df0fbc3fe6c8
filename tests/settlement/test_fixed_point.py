"""The wad fixed point and K**N against 70-digit decimal arithmetic (floats only compare)."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgn_common.errors import InvalidArgumentError
from settlement.fixed_point import (
    K_WAD,
    MAX_POWER_WAD,
    WAD,
    format_wad,
    mul_wad,
    pow_wad,
    wad_from_decimal_string,
)

#: The largest day whose K**N stays within MAX_POWER_WAD: day 46,720 is 2**64 plus rounding.
MAX_DAY = 46_719


def exact_k_power(n: int) -> Decimal:
    """2**(n/730) * 10**18 to 70 significant digits."""
    with localcontext() as ctx:
        ctx.prec = 70
        return Decimal(2) ** (Decimal(n) / Decimal(730)) * Decimal(10) ** 18


def test_k_wad_is_2_to_the_1_over_730_rounded_to_nearest() -> None:
    assert abs(exact_k_power(1) - K_WAD) <= Decimal("0.5")
    # The paper prints K to 12 places.
    assert format_wad(K_WAD, 12) == "1.000949967619"


@given(st.integers(min_value=0, max_value=MAX_DAY))
def test_k_power_is_within_the_documented_bound(n: int) -> None:
    exact = exact_k_power(n)
    error = abs(Decimal(pow_wad(K_WAD, n)) - exact)
    # docs/pricing.md: below n * K**n units of 10**-18, i.e. a relative error below n * 1e-18.
    assert error <= n * exact / WAD


def test_k_power_is_within_the_bound_for_every_day_of_the_first_ten_years() -> None:
    with localcontext() as ctx:
        ctx.prec = 70
        k = Decimal(2) ** (Decimal(1) / Decimal(730))
        exact = Decimal(WAD)
        for n in range(3651):
            assert abs(pow_wad(K_WAD, n) - exact) <= n * exact / WAD, n
            exact *= k


@given(st.integers(min_value=0, max_value=MAX_DAY - 1))
def test_k_power_grows_every_day(n: int) -> None:
    assert pow_wad(K_WAD, n) < pow_wad(K_WAD, n + 1)


@given(
    st.integers(min_value=WAD, max_value=2 * WAD),
    st.integers(min_value=0, max_value=60),
)
def test_any_factor_is_within_half_a_unit_per_rounding(k: int, n: int) -> None:
    with localcontext() as ctx:
        ctx.prec = 120
        exact = (Decimal(k) / WAD) ** n * WAD
        # (n - 1) roundings of at most 5e-19 relative each, plus second-order slack.
        assert abs(pow_wad(k, n) - exact) <= max(n - 1, 0) * exact / WAD / 2 + 1


def test_day_zero_and_one_and_two_years() -> None:
    assert pow_wad(K_WAD, 0) == WAD
    assert pow_wad(K_WAD, 1) == K_WAD
    assert format_wad(pow_wad(K_WAD, 365), 15) == "1.414213562373095"
    assert format_wad(pow_wad(K_WAD, 730), 15) == "2.000000000000000"
    # docs/pricing.md's test vector: 2.94e-16 above 2, inside the bound of 730e-18 * 2.
    assert pow_wad(K_WAD, 730) == 2_000_000_000_000_000_294


def test_powers_past_the_range_are_refused() -> None:
    assert pow_wad(K_WAD, MAX_DAY) <= MAX_POWER_WAD
    with pytest.raises(InvalidArgumentError):
        pow_wad(K_WAD, MAX_DAY + 1)
    with pytest.raises(InvalidArgumentError):
        pow_wad(WAD - 1, 2)
    with pytest.raises(InvalidArgumentError):
        pow_wad(K_WAD, -1)


@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=10**30))
def test_mul_wad_rounds_half_up(a: int, b: int) -> None:
    with localcontext() as ctx:
        ctx.prec = 100
        product = Decimal(a) * Decimal(b) / WAD
        result = mul_wad(a, b)
        assert result - Decimal("0.5") <= product < result + Decimal("0.5")


def test_formatting_and_parsing() -> None:
    assert wad_from_decimal_string("3290.4") == 3_290_400_000_000_000_000_000
    assert wad_from_decimal_string("7") == 7 * WAD
    assert format_wad(3_293_525_800_000_000_000_000, 1) == "3293.5"
    assert format_wad(3_293_550_000_000_000_000_000, 1) == "3293.6"
    assert format_wad(2 * WAD, 0) == "2"
    with pytest.raises(InvalidArgumentError):
        wad_from_decimal_string("-1.5")
