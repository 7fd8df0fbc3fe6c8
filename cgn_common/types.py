"""Plain Python mirrors of the shared proto enums, for domain code that must not import
``generated``. A test checks that the numbers match the protos."""

from __future__ import annotations

import enum


class Tier(enum.IntEnum):
    """Miner tiers (SPEC section 5); values equal ``cgn.common.v1.Tier``."""

    TIER_1_PRIVATE = 1
    TIER_2_DATACENTER = 2
    TIER_3_TEE = 3
    TIER_4A_KYC = 4
    TIER_4B_ANONYMOUS = 5

    @property
    def trusted(self) -> bool:
        """Tiers 1-3 are trusted; tier-4 results must be verified."""
        return self <= Tier.TIER_3_TEE


#: Enterprise work runs on tiers 1-3 unless the account says otherwise (SPEC section 15).
DEFAULT_ENTERPRISE_TIERS = (Tier.TIER_1_PRIVATE, Tier.TIER_2_DATACENTER, Tier.TIER_3_TEE)


class AccountKind(enum.IntEnum):
    """Account kinds (SPEC section 6); values equal ``cgn.common.v1.AccountKind``."""

    NODE = 1
    MINER = 2
    ENTERPRISE = 3
    END_USER = 4
    DEVELOPER = 5
    OPERATOR = 6
    CHARITY = 7


class WorkGrade(enum.IntEnum):
    """Work grades by stake; values equal ``cgn.common.v1.WorkGrade``."""

    LOW = 1
    STANDARD = 2
    HIGH = 3


class Metering(enum.IntEnum):
    """How a metered figure was obtained (docs/metering.md); values equal
    ``cgn.common.v1.MeteringMethod``."""

    NOT_MEASURED = 1
    ISOLATED = 2
    APPORTIONED = 3
