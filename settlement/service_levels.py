"""Service levels and their fiat prices (SPEC section 9): a level asks for at least so many
threads, so much CPU power and so much bandwidth; its price is set in fiat."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cgn_common.errors import InvalidArgumentError, NotFoundError
from settlement.money import PPM, FiatAmount, check_currency


@dataclass(frozen=True, order=True)
class ServiceLevel:
    """A tier of service a request asks for. Levels order by ``rank``, lowest first, which is
    the order a price cap downgrades through (a later issue)."""

    rank: int
    name: str
    min_threads: int
    min_cpu_kmips: int
    min_bandwidth_kbps: int

    def __post_init__(self) -> None:
        if min(self.rank, self.min_threads, self.min_cpu_kmips, self.min_bandwidth_kbps) < 0:
            raise InvalidArgumentError(f"service level {self.name!r} has a negative minimum")

    def admits(self, *, threads: int, cpu_kmips: int, bandwidth_kbps: int) -> bool:
        """True when a miner with these fitness figures meets every minimum of the level."""
        return (
            threads >= self.min_threads
            and cpu_kmips >= self.min_cpu_kmips
            and bandwidth_kbps >= self.min_bandwidth_kbps
        )


@dataclass(frozen=True)
class LevelPrice:
    """What a level costs: the metered resource cost times ``multiplier_ppm``, plus a fixed
    fiat ``request_fee_nano`` per request (in the price list's currency)."""

    multiplier_ppm: int = PPM
    request_fee_nano: int = 0

    def __post_init__(self) -> None:
        if self.multiplier_ppm < 0 or self.request_fee_nano < 0:
            raise InvalidArgumentError("a level's price cannot be negative")


@dataclass(frozen=True)
class PriceList:
    """The fiat prices of the service levels in one currency."""

    currency: str
    prices: Mapping[str, LevelPrice]

    def __post_init__(self) -> None:
        check_currency(self.currency)
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))

    def price(self, level: ServiceLevel) -> LevelPrice:
        """The price of ``level``; NotFoundError when the list does not price it."""
        try:
            return self.prices[level.name]
        except KeyError:
            raise NotFoundError(
                f"no {self.currency} price for service level {level.name!r}"
            ) from None

    def request_fee(self, level: ServiceLevel) -> FiatAmount:
        """The level's fixed per-request fee as money."""
        return FiatAmount(self.price(level).request_fee_nano, self.currency)


#: Default levels (placeholders until tuning, SPEC section 9 "Tuning"): CPU power in the
#: fitness test's KMIPS over all threads, bandwidth as the fitness test measures it.
BASIC = ServiceLevel(1, "basic", min_threads=1, min_cpu_kmips=1, min_bandwidth_kbps=1_000)
STANDARD = ServiceLevel(2, "standard", min_threads=2, min_cpu_kmips=20, min_bandwidth_kbps=10_000)
PERFORMANCE = ServiceLevel(
    3, "performance", min_threads=8, min_cpu_kmips=100, min_bandwidth_kbps=100_000
)
DEFAULT_SERVICE_LEVELS = (BASIC, STANDARD, PERFORMANCE)


def default_price_list(currency: str) -> PriceList:
    """Default prices: basic 0.8x, standard 1.0x, performance 1.5x the metered cost, no fixed
    per-request fee. Placeholders until tuning."""
    return PriceList(
        currency,
        {
            BASIC.name: LevelPrice(multiplier_ppm=800_000),
            STANDARD.name: LevelPrice(multiplier_ppm=1_000_000),
            PERFORMANCE.name: LevelPrice(multiplier_ppm=1_500_000),
        },
    )
