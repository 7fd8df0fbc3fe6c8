"""The payout split: integer parts that always sum to the fee, rounded as SPEC section 15 says."""

from __future__ import annotations

from dataclasses import astuple
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgn_common.errors import InvalidArgumentError
from settlement.fixed_point import UINT256_MAX
from settlement.money import PPM
from settlement.split import (
    DEFAULT_FEE_AGREEMENT,
    CharityChoices,
    FeeAgreement,
    Payouts,
    split_fee,
)

fees = st.one_of(st.integers(0, 1000), st.integers(0, 10**30), st.integers(0, UINT256_MAX))
ppm = st.integers(0, PPM)


@st.composite
def agreements(draw: st.DrawFn) -> FeeAgreement:
    """C and D with C + D < 1."""
    c = draw(st.integers(0, PPM - 1))
    d = draw(st.integers(0, PPM - 1 - c))
    return FeeAgreement(c, d)


charities = st.builds(CharityChoices, ppm, ppm, ppm)


@given(fees, agreements(), charities)
def test_the_split_always_sums_exactly_to_the_fee(
    fee: int, agreement: FeeAgreement, charity: CharityChoices
) -> None:
    payouts = split_fee(fee, agreement, charity)
    assert payouts.total == fee
    assert sum(astuple(payouts)) == fee


@given(fees, agreements(), charities)
def test_every_share_is_non_negative_and_rounded_as_specified(
    fee: int, agreement: FeeAgreement, charity: CharityChoices
) -> None:
    payouts = split_fee(fee, agreement, charity)
    assert all(part >= 0 for part in astuple(payouts))
    c = Fraction(agreement.contributor_ppm, PPM)
    d = Fraction(agreement.developer_ppm, PPM)
    o = 1 - c - d
    cc, dc, oc = (Fraction(x, PPM) for x in astuple(charity))
    # Contributor, developer and every charity share: the exact value rounded down.
    assert payouts.contributor == int(fee * c * (1 - cc))
    assert payouts.contributor_charity == int(fee * c * cc)
    assert payouts.developer == int(fee * d * (1 - dc))
    assert payouts.developer_charity == int(fee * d * dc)
    assert payouts.operator_charity == int(fee * o * oc)
    # The operator takes the remainder: its exact share, plus under one unit per other part.
    exact_operator = fee * o * (1 - oc)
    assert exact_operator <= payouts.operator < exact_operator + 5


def test_the_default_agreement() -> None:
    assert split_fee(1000) == Payouts(700, 0, 200, 0, 100, 0)
    assert DEFAULT_FEE_AGREEMENT.operator_ppm == 100_000


def test_remainders_go_to_the_operator() -> None:
    # 10 * 1/3 = 3.33 for the contributor and the developer; the operator gets 10 - 3 - 3.
    third = FeeAgreement(333_334, 333_333)
    assert split_fee(10, third) == Payouts(3, 0, 3, 0, 4, 0)


def test_charity_shares_round_down() -> None:
    payouts = split_fee(999, DEFAULT_FEE_AGREEMENT, CharityChoices(100_000, 500_000, 250_000))
    # Contributor 699.3: 629.37 kept, 69.93 to charity; developer 199.8: 99.9 and 99.9;
    # operator 99.9: 24.975 to charity, the rest of the fee to the operator.
    assert payouts == Payouts(629, 69, 99, 99, 79, 24)


@pytest.mark.parametrize(("c", "d"), [(600_000, 400_000), (1_000_001, 0), (-1, 0)])
def test_bad_agreements_are_refused(c: int, d: int) -> None:
    with pytest.raises(InvalidArgumentError):
        FeeAgreement(c, d)


@pytest.mark.parametrize("fee", [-1, UINT256_MAX + 1])
def test_fees_outside_uint256_are_refused(fee: int) -> None:
    with pytest.raises(InvalidArgumentError):
        split_fee(fee)
