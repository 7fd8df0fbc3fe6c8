"""Pricing, the microtransaction ledger, the daily rollup and the chain client (SPEC sections
8-10). Here so far: the pricing core (docs/pricing.md). The node records finished work
through ``cgn_node.recorder.WorkRecorder``, which the ledger will implement."""

from settlement.errors import StaleRateError
from settlement.fixed_point import K_WAD, WAD, format_wad, mul_wad, pow_wad
from settlement.hardware import (
    DEFAULT_CPU_TABLE,
    DEFAULT_GPU_TABLE,
    MinerBenchmark,
    RatioTable,
    ReferenceHardware,
)
from settlement.money import ATTO_PER_TOKEN, NANO_PER_UNIT, PPM, FiatAmount
from settlement.pricing import MeteredUsage, PricingTables, WorkPrice, price_work
from settlement.rates import FreshRates, Rate, RateSource, SandboxRateSource
from settlement.resources import (
    DAY_ZERO,
    R0,
    ResourceAmounts,
    ResourceEpoch,
    ResourceSchedule,
    day_number,
    equivalency_table,
    format_equivalency_table,
)
from settlement.service_levels import (
    DEFAULT_SERVICE_LEVELS,
    LevelPrice,
    PriceList,
    ServiceLevel,
    default_price_list,
)
from settlement.split import (
    DEFAULT_FEE_AGREEMENT,
    CharityChoices,
    FeeAgreement,
    Payouts,
    split_fee,
)

__all__ = [
    "ATTO_PER_TOKEN",
    "DAY_ZERO",
    "DEFAULT_CPU_TABLE",
    "DEFAULT_FEE_AGREEMENT",
    "DEFAULT_GPU_TABLE",
    "DEFAULT_SERVICE_LEVELS",
    "K_WAD",
    "NANO_PER_UNIT",
    "PPM",
    "R0",
    "WAD",
    "CharityChoices",
    "FeeAgreement",
    "FiatAmount",
    "FreshRates",
    "LevelPrice",
    "MeteredUsage",
    "MinerBenchmark",
    "Payouts",
    "PriceList",
    "PricingTables",
    "Rate",
    "RateSource",
    "RatioTable",
    "ReferenceHardware",
    "ResourceAmounts",
    "ResourceEpoch",
    "ResourceSchedule",
    "SandboxRateSource",
    "ServiceLevel",
    "StaleRateError",
    "WorkPrice",
    "day_number",
    "default_price_list",
    "equivalency_table",
    "format_equivalency_table",
    "format_wad",
    "mul_wad",
    "pow_wad",
    "price_work",
    "split_fee",
]
