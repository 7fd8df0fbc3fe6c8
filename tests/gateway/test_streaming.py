"""The gateway's streamed bodies, against a scripted node: a large or chunked upload goes
through ``CallStream`` and is read from the DApp only once the node accepted it (a body over
the limit is refused with a JSON 413 before it is read, before ``100 Continue``); a streamed
answer goes out as it comes, ``Content-Length`` kept when known and chunked when not, and an
answer cut mid-way ends the DApp's connection short, never looking complete."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cgn_common.errors import BodyTooLargeError, InvalidArgumentError, UnavailableError
from cgn_common.streams import INLINE_BODY_BYTES
from gateway._rpc import NodeClient
from generated.cgn.common.v1 import http_pb2
from generated.cgn.work.v1 import work_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers.gateway import gateway_before
from tests.helpers.pki import Pki

GUARD_S = 15.0
LIMIT = 1_000_000  # the body limit the scripted node accepts


def _head(*headers: tuple[str, bytes]) -> http_pb2.HttpResponseHead:
    return http_pb2.HttpResponseHead(
        status_code=200, headers=[http_pb2.HttpHeader(name=n, value=v) for n, v in headers]
    )


@dataclass
class StreamingNode(work_grpc.WorkServiceServicer):
    """Answers ``/sized`` and ``/chunked`` streamed (3 slices of 1,000 bytes), ``/cut`` with
    one slice and then the loss of its miner; takes uploads up to LIMIT bytes."""

    received: list[bytes] = field(default_factory=list)
    starts: list[work_pb.CallStart] = field(default_factory=list)

    async def Call(  # noqa: N802
        self, request: work_pb.CallRequest, context: Any
    ) -> work_pb.CallResponse:
        assert request.options.stream_answers  # the gateway takes streamed answers
        path = request.head.path
        if path == "/sized":
            return work_pb.CallResponse(head=_head(("Content-Length", b"3000")), answer_token=path)
        if path in ("/chunked", "/cut"):
            return work_pb.CallResponse(head=_head(), answer_token=path)
        return work_pb.CallResponse(head=_head(), body=b"whole")

    async def ReadAnswer(  # noqa: N802
        self, request: work_pb.ReadAnswerRequest, context: Any
    ) -> AsyncIterator[work_pb.ReadAnswerResponse]:
        for n in range(1 if request.answer_token == "/cut" else 3):
            yield work_pb.ReadAnswerResponse(body=http_pb2.BodyChunk(data=b"%d" % n * 1000))
        if request.answer_token == "/cut":
            raise UnavailableError("the miner was lost mid-answer", reason="ANSWER_CUT")
        yield work_pb.ReadAnswerResponse(receipt=work_pb2.WorkReceipt(work_id="w"))

    async def CallStream(  # noqa: N802
        self, request_iterator: AsyncIterator[work_pb.CallStreamRequest], context: Any
    ) -> AsyncIterator[work_pb.CallStreamResponse]:
        first = await anext(aiter(request_iterator))
        start = first.start
        self.starts.append(start)
        assert start.await_accept
        if start.head.content_length > LIMIT:
            raise BodyTooLargeError("the request body is over the account's limit")
        yield work_pb.CallStreamResponse(accepted=work_pb.CallAccepted(max_body_bytes=LIMIT))
        body = bytearray()
        async for part in request_iterator:
            body += part.body.data
            if part.body.end_of_body:
                break
        else:  # as the node: a stream that stops short may be a cancel, never a whole body
            raise InvalidArgumentError("the body's stream ended without end_of_body")
        self.received.append(bytes(body))
        yield work_pb.CallStreamResponse(head=_head(("Content-Length", b"2")))
        yield work_pb.CallStreamResponse(body=http_pb2.BodyChunk(data=b"ok"))
        yield work_pb.CallStreamResponse(receipt=work_pb2.WorkReceipt(work_id="w"))


@dataclass
class Gateway:
    host: str
    port: int
    node: StreamingNode


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    scripted = StreamingNode()
    async with gateway_before(scripted, Pki.create(tmp_path), body_timeout_s=5) as url:
        host, _, port = url.removeprefix("http://").rpartition(":")
        yield Gateway(host, int(port), scripted)


async def _raw(gw: Gateway, head: bytes, body: bytes = b"") -> bytes:
    """Sends ``head`` (and ``body``) and reads everything until the gateway closes. A body
    the gateway refused may be cut with a reset while it is still being sent (by design,
    docs/gateway.md, Limits): what came before the reset is the answer."""
    async with asyncio.timeout(GUARD_S):
        reader, writer = await asyncio.open_connection(gw.host, gw.port)
        got: list[bytes] = []
        try:
            writer.write(head + body)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                await writer.drain()
            with contextlib.suppress(ConnectionResetError):
                while data := await reader.read(65536):
                    got.append(data)
            return b"".join(got)
        finally:
            writer.close()


def _request(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: gw", "X-CGN-Session: tok", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


async def test_a_body_over_the_limit_is_refused_with_a_json_413_before_it_is_read(
    gateway: Gateway,
) -> None:
    size = 5 * LIMIT
    head = _request(
        "/v1/dservices/svc/up",
        f"Content-Length: {size}",
        "Expect: 100-continue",
        "Connection: keep-alive",
    ).replace(b"GET", b"POST", 1)
    answer = await _raw(gateway, head)  # no body byte is ever sent
    status, headers, body = _split(answer)
    assert status == "HTTP/1.1 413 Request Entity Too Large", answer[:200]  # no 100 first
    assert json.loads(body)["error"]["reason"] == "BODY_TOO_LARGE"
    assert headers["connection"] == "close"
    assert gateway.node.starts[0].head.content_length == size
    assert gateway.node.received == []


async def test_a_chunked_body_is_cut_at_the_limit_with_a_json_413(gateway: Gateway) -> None:
    piece = b"%x\r\n%s\r\n" % (100_000, b"x" * 100_000)
    head = _request("/v1/dservices/svc/up", "Transfer-Encoding: chunked").replace(
        b"GET", b"POST", 1
    )
    # More than LIMIT, never ended: the gateway answers without waiting for the end.
    answer = await _raw(gateway, head, piece * (LIMIT // 100_000 + 2))
    status, headers, body = _split(answer)
    assert status.startswith("HTTP/1.1 413"), answer[:200]
    assert json.loads(body)["error"]["reason"] == "BODY_TOO_LARGE"
    assert headers["connection"] == "close"
    assert gateway.node.received == []


async def test_a_large_upload_streams_to_the_node_whole(gateway: Gateway) -> None:
    body = bytes(range(256)) * (INLINE_BODY_BYTES // 256 * 3 + 1)
    head = _request(
        "/v1/dservices/svc/up", f"Content-Length: {len(body)}", "Connection: close"
    ).replace(b"GET", b"POST", 1)
    status, headers, answer = _split(await _raw(gateway, head, body))
    assert (status, headers["content-length"], answer) == ("HTTP/1.1 200 OK", "2", b"ok")
    assert gateway.node.received == [body]


class _CallEndedAsWritten:
    """A CallStream the node ended as its start was written, as grpc.aio's client reports it:
    INTERNAL "Internal error from Core" in place of the node's status (grpc/grpc#36066)."""

    error = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Internal error from Core",
        debug_error_string='Failed "execute_batch": (SendMessageOperation,)',
    )

    async def write(self, message: Any) -> None:
        raise self.error

    async def read(self) -> Any:
        raise self.error

    def cancel(self) -> bool:
        return False


async def test_a_start_whose_call_ended_as_it_was_written_goes_again_on_a_new_call(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the start's write races the node ending the call (e.g. refusing its session at
    the call's start, about once in 400 calls on a busy machine), grpc.aio hides the node's
    answer behind an INTERNAL (the DApp once got a 500). No body byte has been read then: the
    gateway sends the start again on a call of its own, once, and the upload goes through."""
    real = NodeClient.call_stream
    made: list[str] = []

    def call_stream(self: NodeClient, token: str) -> Any:
        made.append(token)
        return _CallEndedAsWritten() if len(made) == 1 else real(self, token)

    monkeypatch.setattr(NodeClient, "call_stream", call_stream)
    body = bytes(range(256)) * (INLINE_BODY_BYTES // 256 * 2 + 1)
    head = _request(
        "/v1/dservices/svc/up", f"Content-Length: {len(body)}", "Connection: close"
    ).replace(b"GET", b"POST", 1)
    status, _, answer = _split(await _raw(gateway, head, body))
    assert (status, answer) == ("HTTP/1.1 200 OK", b"ok")
    assert len(made) == 2
    assert len(gateway.node.starts) == 1  # the first start never reached the node
    assert gateway.node.received == [body]


@pytest.mark.parametrize(
    ("path", "framing"),
    [("/sized", {"content-length": "3000"}), ("/chunked", {"transfer-encoding": "chunked"})],
)
async def test_a_streamed_answer_keeps_its_length_or_goes_chunked(
    gateway: Gateway, path: str, framing: dict[str, str]
) -> None:
    answer = await _raw(gateway, _request(f"/v1/dservices/svc{path}", "Connection: close"))
    status, headers, body = _split(answer)
    assert status == "HTTP/1.1 200 OK"
    assert framing.items() <= headers.items()
    expected = b"".join(b"%d" % n * 1000 for n in range(3))
    if path == "/chunked":
        assert body.endswith(b"0\r\n\r\n")  # the last chunk: complete
        body = b"".join(body.split(b"\r\n")[1::2])
    assert body == expected


async def test_an_answer_cut_mid_way_ends_the_connection_without_its_end(
    gateway: Gateway,
) -> None:
    answer = await _raw(gateway, _request("/v1/dservices/svc/cut", "Connection: keep-alive"))
    status, headers, body = _split(answer)
    assert status == "HTTP/1.1 200 OK"  # the head had gone out
    assert headers["transfer-encoding"] == "chunked"
    assert b"0" * 1000 in body
    assert not body.endswith(b"0\r\n\r\n")  # no last chunk: the client knows it is cut
