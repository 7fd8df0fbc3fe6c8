"""The CPUcoin/fiat rate (SPEC section 15): a pluggable source, a staleness limit, and the
rate used handed back so that the ledger row stores it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cgn_common.errors import InvalidArgumentError, NotFoundError
from settlement.errors import StaleRateError
from settlement.money import check_currency


def utc_now() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Rate:
    """The price of one CPUcoin in a fiat currency at one moment."""

    #: ISO-4217 code of the fiat currency.
    currency: str
    #: Fiat nano-units (10**-9 of the currency) per whole CPUcoin; always positive.
    nano_per_token: int
    #: When the source observed the rate (aware, UTC).
    observed_at: datetime
    #: Which source gave it, for the ledger and for audits (e.g. ``sandbox``).
    source: str

    def __post_init__(self) -> None:
        check_currency(self.currency)
        if isinstance(self.nano_per_token, bool) or self.nano_per_token <= 0:
            raise InvalidArgumentError(f"a rate must be positive, got {self.nano_per_token!r}")
        if self.observed_at.tzinfo is None:
            raise InvalidArgumentError("a rate's timestamp must carry a time zone")

    def age(self, now: datetime) -> timedelta:
        """How old the rate is at ``now`` (negative when its timestamp is ahead of ``now``)."""
        return now - self.observed_at


class RateSource(Protocol):
    """Where rates come from: an exchange feed, an oracle contract, or the sandbox's fixed one."""

    async def rate(self, currency: str) -> Rate:
        """The newest rate the source has for ``currency``; NotFoundError if it has none."""


class SandboxRateSource:
    """A fake for the sandbox and tests: fixed rates, stamped now (or at a fixed instant)."""

    def __init__(
        self,
        nano_per_token: Mapping[str, int],
        *,
        observed_at: datetime | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._rates = {check_currency(c): n for c, n in nano_per_token.items()}
        self._observed_at = observed_at
        self._clock = clock

    async def rate(self, currency: str) -> Rate:
        """The fixed rate for ``currency``."""
        if currency not in self._rates:
            raise NotFoundError(f"the sandbox rate source has no {currency} rate")
        observed_at = self._observed_at or self._clock()
        return Rate(currency, self._rates[currency], observed_at, "sandbox")


#: How old a rate may be before pricing refuses it.
DEFAULT_MAX_RATE_AGE = timedelta(minutes=5)


class FreshRates:
    """Asks a :class:`RateSource` and refuses a rate older than ``max_age`` (or dated more
    than ``max_age`` ahead of this clock, which is a broken clock somewhere)."""

    def __init__(
        self,
        source: RateSource,
        *,
        max_age: timedelta = DEFAULT_MAX_RATE_AGE,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if max_age <= timedelta(0):
            raise InvalidArgumentError("the rate staleness limit must be positive")
        self._source = source
        self._max_age = max_age
        self._clock = clock

    async def rate(self, currency: str) -> Rate:
        """A fresh rate for ``currency``: store it with the row it prices."""
        rate = await self._source.rate(currency)
        if rate.currency != currency:
            raise InvalidArgumentError(f"asked for a {currency} rate, got {rate.currency}")
        age = rate.age(self._clock())
        if abs(age) > self._max_age:
            raise StaleRateError(
                f"the {currency} rate from {rate.source} is {age.total_seconds():.0f} s old "
                f"(observed {rate.observed_at.isoformat()}); the limit is "
                f"{self._max_age.total_seconds():.0f} s"
            )
        return rate
