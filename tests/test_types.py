"""The plain enums in cgn_common.types mirror the proto enums number for number."""

from __future__ import annotations

import enum

import pytest

from cgn_common.types import AccountKind, Tier, WorkGrade
from generated.cgn.common.v1 import types_pb2


@pytest.mark.parametrize(
    ("python_enum", "proto_enum", "prefix"),
    [
        (Tier, types_pb2.Tier, ""),
        (AccountKind, types_pb2.AccountKind, "ACCOUNT_KIND_"),
        (WorkGrade, types_pb2.WorkGrade, "WORK_GRADE_"),
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
