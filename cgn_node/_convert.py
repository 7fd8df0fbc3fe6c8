"""Protos <-> the node's domain types (``cgn_node/work.py``), in one place."""

from __future__ import annotations

from cgn_common.streams import INLINE_BODY_BYTES
from cgn_common.types import Metering
from cgn_node.work import Headers, HttpRequest, Usage, WorkResult, WorkUnit
from generated.cgn.common.v1 import http_pb2, resources_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as link_pb
from generated.cgn.work.v1 import work_service_pb2 as work_pb


def _headers(headers: Headers) -> list[http_pb2.HttpHeader]:
    return [http_pb2.HttpHeader(name=n, value=v) for n, v in headers]


def request_from_call(call: work_pb.CallRequest) -> HttpRequest:
    """The HTTP request a CallRequest carries."""
    head = call.head
    return HttpRequest(
        method=head.method,
        path=head.path,
        query=head.query,
        headers=tuple((h.name, h.value) for h in head.headers),
        body=call.body,
    )


def _metering(value: int) -> Metering:
    """A reported metering method; UNSPECIFIED (a miner that does not say how it measured) or
    a number this node does not know counts as not measured."""
    try:
        return Metering(value)
    except ValueError:
        return Metering.NOT_MEASURED


def usage_from_proto(usage: resources_pb2.ResourceUsage) -> Usage:
    """Usage from its proto. A figure whose method is not measured is zero, whatever the miner
    put there (docs/metering.md)."""
    cpu_metering = _metering(usage.cpu_time_metering)
    memory_metering = _metering(usage.peak_memory_metering)
    return Usage(
        cpu_time_us=(
            0 if cpu_metering is Metering.NOT_MEASURED else usage.cpu_time.ToMicroseconds()
        ),
        wall_time_us=usage.wall_time.ToMicroseconds(),
        bytes_in=usage.bytes_in,
        bytes_out=usage.bytes_out,
        peak_memory_bytes=(
            0 if memory_metering is Metering.NOT_MEASURED else usage.peak_memory_bytes
        ),
        cpu_metering=cpu_metering,
        peak_memory_metering=memory_metering,
    )


def usage_to_proto(usage: Usage) -> resources_pb2.ResourceUsage:
    """The proto of ``usage``."""
    message = resources_pb2.ResourceUsage(
        bytes_in=usage.bytes_in,
        bytes_out=usage.bytes_out,
        peak_memory_bytes=usage.peak_memory_bytes,
        cpu_time_metering=int(usage.cpu_metering),  # type: ignore[arg-type]
        peak_memory_metering=int(usage.peak_memory_metering),  # type: ignore[arg-type]
    )
    message.cpu_time.FromMicroseconds(usage.cpu_time_us)
    message.wall_time.FromMicroseconds(usage.wall_time_us)
    return message


def assignment(
    unit: WorkUnit, *, timeout_s: float, lease_s: float, dispatch_token: str
) -> link_pb.WorkAssignment:
    """The WorkAssignment that dispatches ``unit`` (attempt ``unit.attempts``). A body over
    INLINE_BODY_BYTES is left out: the miner fetches it on the dispatch's data plane."""
    r = unit.request
    size = r.body_size
    inline = r.spool is None and size <= INLINE_BODY_BYTES
    message = link_pb.WorkAssignment(
        work_id=unit.work_id,
        dservice=unit.dservice,
        head=http_pb2.HttpRequestHead(
            method=r.method,
            path=r.path,
            query=r.query,
            headers=_headers(r.headers),
            content_length=size,
        ),
        body=r.body if inline else b"",
        body_complete=inline,
        body_size=size,
        affinity_key=unit.affinity_key,
        role=link_pb.WORK_ROLE_PRIMARY,
        attempt=unit.attempts,
        request_id=unit.request_id,
        dispatch_token=dispatch_token,
    )
    message.timeout.FromMilliseconds(max(1, int(timeout_s * 1000)))
    message.lease.FromMilliseconds(max(1, int(lease_s * 1000)))
    return message


def result_from_parts(
    head: http_pb2.HttpResponseHead, body: bytes, usage: resources_pb2.ResourceUsage
) -> WorkResult:
    """A miner's answer as a WorkResult."""
    return WorkResult(
        status=head.status_code,
        headers=tuple((h.name, h.value) for h in head.headers),
        body=body,
        usage=usage_from_proto(usage),
    )


def response_head(result: WorkResult, *, streamed: bool = False) -> http_pb2.HttpResponseHead:
    """The HttpResponseHead of ``result``; without ``content_length`` when its body streams
    (``result`` then holds the head alone, and the length is not known in advance)."""
    head = http_pb2.HttpResponseHead(status_code=result.status, headers=_headers(result.headers))
    if not streamed:
        head.content_length = len(result.body)
    return head
