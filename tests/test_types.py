"""The plain enums in cgn_common.types mirror the proto enums number for number."""

from __future__ import annotations

import enum

import pytest

from cgn_common.types import AccountKind, Metering, Tier, WorkGrade
from generated.cgn.common.v1 import resources_pb2, types_pb2

#: The Python names say the SPEC's tier number; the proto names start with a word so that C#'s
#: prefix stripping leaves valid identifiers.
TIER_NAMES = {
    Tier.TIER_1_PRIVATE: "TIER_PRIVATE",
    Tier.TIER_2_DATACENTER: "TIER_DATACENTER",
    Tier.TIER_3_TEE: "TIER_TEE",
    Tier.TIER_4A_KYC: "TIER_CONSUMER_KYC",
    Tier.TIER_4B_ANONYMOUS: "TIER_CONSUMER_ANONYMOUS",
}


def test_tiers_mirror_the_proto() -> None:
    assert {name: int(t) for t, name in TIER_NAMES.items()} == {
        name: number for name, number in types_pb2.Tier.items() if number
    }


def test_proto_enum_values_survive_prefix_stripping() -> None:
    for enum_name in types_pb2.DESCRIPTOR.enum_types_by_name:
        enum_type = types_pb2.DESCRIPTOR.enum_types_by_name[enum_name]
        prefix = "".join("_" + c if c.isupper() else c for c in enum_name).lstrip("_").upper()
        for value in enum_type.values:
            rest = value.name.removeprefix(prefix + "_")
            assert rest[0].isalpha(), value.name  # C# would make it "_" + rest


@pytest.mark.parametrize(
    ("python_enum", "proto_enum", "prefix"),
    [
        (AccountKind, types_pb2.AccountKind, "ACCOUNT_KIND_"),
        (WorkGrade, types_pb2.WorkGrade, "WORK_GRADE_"),
        (Metering, resources_pb2.MeteringMethod, "METERING_METHOD_"),
    ],
)
def test_enum_mirrors_proto(
    python_enum: type[enum.IntEnum], proto_enum: object, prefix: str
) -> None:
    proto_values = {
        name: number
        for name, number in proto_enum.items()  # type: ignore[attr-defined]
        if not name.endswith("_UNSPECIFIED")
    }
    assert {prefix + m.name: int(m) for m in python_enum} == proto_values


def test_only_tiers_one_to_three_are_trusted() -> None:
    assert [t for t in Tier if t.trusted] == [
        Tier.TIER_1_PRIVATE,
        Tier.TIER_2_DATACENTER,
        Tier.TIER_3_TEE,
    ]
