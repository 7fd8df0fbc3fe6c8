"""Errors of pricing and settlement (the root and the generic classes: cgn_common.errors)."""

from __future__ import annotations

from cgn_common.errors import UnavailableError


class StaleRateError(UnavailableError):
    """The rate source's newest CPUcoin/fiat rate is older than the staleness limit: nothing
    is priced with it. Retrying may succeed once the source has a new rate."""

    reason = "RATE_STALE"
