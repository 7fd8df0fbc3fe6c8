"""The node reads a miner's usage with how each figure was measured (docs/metering.md)."""

from __future__ import annotations

from cgn_common.types import Metering
from cgn_node._convert import usage_from_proto, usage_to_proto
from cgn_node.work import Usage
from generated.cgn.common.v1 import resources_pb2


def _reported(cpu_metering: int, memory_metering: int) -> resources_pb2.ResourceUsage:
    usage = resources_pb2.ResourceUsage(
        bytes_in=10,
        bytes_out=20,
        peak_memory_bytes=40 << 20,
        cpu_time_metering=cpu_metering,  # type: ignore[arg-type]
        peak_memory_metering=memory_metering,  # type: ignore[arg-type]
    )
    usage.cpu_time.FromMicroseconds(250_000)
    usage.wall_time.FromMicroseconds(300_000)
    return usage


def test_measured_figures_and_their_methods_round_trip() -> None:
    usage = usage_from_proto(_reported(Metering.APPORTIONED, Metering.ISOLATED))
    assert usage == Usage(
        cpu_time_us=250_000,
        wall_time_us=300_000,
        bytes_in=10,
        bytes_out=20,
        peak_memory_bytes=40 << 20,
        cpu_metering=Metering.APPORTIONED,
        peak_memory_metering=Metering.ISOLATED,
    )
    assert usage_from_proto(usage_to_proto(usage)) == usage


def test_a_figure_nobody_vouched_for_is_zero() -> None:
    """UNSPECIFIED (a miner older than the fields), NOT_MEASURED, or a method this node does
    not know: the figure is zero, whatever the miner put there."""
    for method in (resources_pb2.METERING_METHOD_UNSPECIFIED, Metering.NOT_MEASURED, 99):
        usage = usage_from_proto(_reported(method, method))
        assert (usage.cpu_time_us, usage.peak_memory_bytes) == (0, 0)
        assert usage.cpu_metering is usage.peak_memory_metering is Metering.NOT_MEASURED
        assert usage.wall_time_us == 300_000  # always measured
