"""The rate source: the sandbox fake, the staleness limit, the rate handed back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from cgn_common.errors import InvalidArgumentError, NotFoundError
from settlement.errors import StaleRateError
from settlement.rates import FreshRates, Rate, SandboxRateSource

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_fresh_rate_is_returned_with_its_timestamp_and_source() -> None:
    clock = Clock(T0)
    rates = FreshRates(SandboxRateSource({"EUR": 50_000_000}, clock=clock), clock=clock)
    rate = await rates.rate("EUR")
    assert rate == Rate("EUR", 50_000_000, T0, "sandbox")


async def test_a_stale_rate_is_refused_with_a_clear_error() -> None:
    clock = Clock(T0)
    source = SandboxRateSource({"EUR": 50_000_000}, observed_at=T0)
    rates = FreshRates(source, max_age=timedelta(seconds=60), clock=clock)
    clock.now = T0 + timedelta(seconds=60)
    assert (await rates.rate("EUR")).observed_at == T0
    clock.now = T0 + timedelta(seconds=61)
    with pytest.raises(StaleRateError, match=r"EUR rate from sandbox is 61 s old") as caught:
        await rates.rate("EUR")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.stable_reason == "RATE_STALE"


async def test_a_rate_dated_far_ahead_is_refused() -> None:
    source = SandboxRateSource({"EUR": 1}, observed_at=T0 + timedelta(hours=1))
    with pytest.raises(StaleRateError):
        await FreshRates(source, clock=Clock(T0)).rate("EUR")


async def test_an_unknown_currency_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        await FreshRates(SandboxRateSource({"EUR": 1})).rate("USD")


@pytest.mark.parametrize(
    ("currency", "nano", "observed_at"),
    [
        ("EUR", 0, T0),
        ("EUR", -5, T0),
        ("euro", 1, T0),
        ("EUR", 1, datetime(2025, 6, 1)),  # naive on purpose
    ],
)
def test_bad_rates_are_refused(currency: str, nano: int, observed_at: datetime) -> None:
    with pytest.raises(InvalidArgumentError):
        Rate(currency, nano, observed_at, "test")
