"""Money as exact integers (SPEC section 9): CPUcoin in atto-units, fiat in nano-units."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cgn_common.errors import InvalidArgumentError
from settlement.fixed_point import UINT256_MAX

#: CPUcoin's smallest unit is 10**-18 of a coin, like wei (an "atto-CPUcoin").
ATTO_PER_TOKEN = 10**18
#: Fiat amounts are in 10**-9 of the currency's unit, so sub-cent fees are exact.
NANO_PER_UNIT = 10**9
#: Ratios (premiums, shares, multipliers) are integers in parts per million: 1_000_000 is 1.0.
PPM = 1_000_000

_CURRENCY = re.compile(r"^[A-Z]{3}$")


def check_currency(code: str) -> str:
    """Returns ``code`` if it looks like an ISO-4217 alphabetic code (``EUR``), else refuses."""
    if not _CURRENCY.match(code):
        raise InvalidArgumentError(f"not an ISO-4217 currency code: {code!r}")
    return code


def check_amount(name: str, value: int) -> int:
    """Returns ``value`` if it is a non-negative integer that fits a uint256, else refuses."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT256_MAX:
        raise InvalidArgumentError(f"{name} must be an integer in [0, 2**256), got {value!r}")
    return value


def check_ppm(name: str, value: int, *, upper: int = PPM) -> int:
    """Returns ``value`` if it is an integer ratio in [0, ``upper``] parts per million."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise InvalidArgumentError(f"{name} must be an integer in [0, {upper}] ppm, got {value!r}")
    return value


@dataclass(frozen=True)
class FiatAmount:
    """An amount of a fiat currency in nano-units (10**-9 of the unit)."""

    nano: int
    currency: str

    def __post_init__(self) -> None:
        check_amount("a fiat amount", self.nano)
        check_currency(self.currency)

    def __str__(self) -> str:
        whole, fraction = divmod(self.nano, NANO_PER_UNIT)
        return f"{whole}.{fraction:09d} {self.currency}"
