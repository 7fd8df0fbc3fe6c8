"""Pricing, the microtransaction ledger, the daily rollup and the chain client (SPEC sections
8-10). Here so far: the pricing core (docs/pricing.md) and the ledger's row hash
(docs/ledger.md). The node records finished work through ``cgn_node.recorder.WorkRecorder``,
which the ledger will implement."""

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
from settlement.rowhash import (
    PRIVATE_COLUMNS_V1,
    PUBLIC_COLUMNS_V1,
    ColumnType,
    custom_hash,
    encode_private_row,
    encode_public_row,
    keccak256,
    private_hash,
    redact_headers,
    row_hash,
    xor_aggregate,
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
    "PRIVATE_COLUMNS_V1",
    "PUBLIC_COLUMNS_V1",
    "R0",
    "WAD",
    "CharityChoices",
    "ColumnType",
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
    "custom_hash",
    "day_number",
    "default_price_list",
    "encode_private_row",
    "encode_public_row",
    "equivalency_table",
    "format_equivalency_table",
    "format_wad",
    "keccak256",
    "mul_wad",
    "pow_wad",
    "price_work",
    "private_hash",
    "redact_headers",
    "row_hash",
    "split_fee",
    "xor_aggregate",
]
