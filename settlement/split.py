"""The payout split of a fee (SPEC sections 9 and 15): contributor P*C, developer P*D, node
operator P*(1-C-D), each optionally giving a chosen share of its part to a charity.

Every share but the operator's own rounds down from the exact value; the operator takes the
remainder, so the six parts always sum to the fee exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgn_common.errors import InvalidArgumentError
from settlement.money import PPM, check_amount, check_ppm


@dataclass(frozen=True)
class FeeAgreement:
    """C and D of a DService's fee agreement, in ppm of the fee; C + D < 1."""

    contributor_ppm: int
    developer_ppm: int

    def __post_init__(self) -> None:
        check_ppm("C", self.contributor_ppm)
        check_ppm("D", self.developer_ppm)
        if self.contributor_ppm + self.developer_ppm >= PPM:
            raise InvalidArgumentError("C + D must be below 1 (1_000_000 ppm): the operator's too")

    @property
    def operator_ppm(self) -> int:
        """1 - C - D."""
        return PPM - self.contributor_ppm - self.developer_ppm


#: The global default for DServices without a registered agreement: 70% to the contributor,
#: 20% to the developer, 10% to the node operator. A placeholder until tuning (the paper sets
#: no numbers).
DEFAULT_FEE_AGREEMENT = FeeAgreement(contributor_ppm=700_000, developer_ppm=200_000)


@dataclass(frozen=True)
class CharityChoices:
    """The share of its own part each beneficiary sends to its chosen charity, in ppm
    (0: none). Each entity chooses for itself (its account's charity choice)."""

    contributor_ppm: int = 0
    developer_ppm: int = 0
    operator_ppm: int = 0

    def __post_init__(self) -> None:
        check_ppm("the contributor's charity share", self.contributor_ppm)
        check_ppm("the developer's charity share", self.developer_ppm)
        check_ppm("the operator's charity share", self.operator_ppm)


#: Nobody gives to charity.
NO_CHARITY = CharityChoices()


@dataclass(frozen=True)
class Payouts:
    """The integer amounts one fee pays out, in the fee's unit (atto-CPUcoin)."""

    contributor: int
    contributor_charity: int
    developer: int
    developer_charity: int
    operator: int
    operator_charity: int

    @property
    def total(self) -> int:
        """The sum of all six parts: always the fee."""
        return (
            self.contributor
            + self.contributor_charity
            + self.developer
            + self.developer_charity
            + self.operator
            + self.operator_charity
        )


def _share(fee: int, part_ppm: int, kept_ppm: int) -> int:
    """floor(fee * part * kept), both ratios in ppm."""
    return fee * part_ppm * kept_ppm // (PPM * PPM)


def split_fee(
    fee: int, agreement: FeeAgreement = DEFAULT_FEE_AGREEMENT, charity: CharityChoices = NO_CHARITY
) -> Payouts:
    """Splits ``fee`` (a non-negative integer) by the agreement and the charity choices."""
    check_amount("the fee", fee)
    c, d, o = agreement.contributor_ppm, agreement.developer_ppm, agreement.operator_ppm
    contributor = _share(fee, c, PPM - charity.contributor_ppm)
    contributor_charity = _share(fee, c, charity.contributor_ppm)
    developer = _share(fee, d, PPM - charity.developer_ppm)
    developer_charity = _share(fee, d, charity.developer_ppm)
    operator_charity = _share(fee, o, charity.operator_ppm)
    operator = fee - (
        contributor + contributor_charity + developer + developer_charity + operator_charity
    )
    return Payouts(
        contributor=contributor,
        contributor_charity=contributor_charity,
        developer=developer,
        developer_charity=developer_charity,
        operator=operator,
        operator_charity=operator_charity,
    )
