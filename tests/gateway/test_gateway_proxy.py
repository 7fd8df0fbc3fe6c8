"""The gateway's half of byte-exact proxying, in process against a scripted node (a real gRPC
server with mutual TLS): what the node is asked to send on, and the DService's answer written
to the DApp exactly, framing included, whatever aiohttp would have added."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from generated.cgn.common.v1 import http_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers.gateway import gateway_before
from tests.helpers.http1 import Answer, exchange
from tests.helpers.pki import Pki

#: Scripted answers by path: status, headers, body.
_ANSWERS: dict[str, tuple[int, list[tuple[str, bytes]], bytes]] = {
    "/head": (200, [("Content-Length", b"1234"), ("ETag", b'"e"')], b""),
    "/304": (304, [("ETag", b'"e"'), ("Content-Length", b"1234")], b""),
    "/untyped": (200, [("X-A", b"1")], b"raw bytes"),
    "/ordered": (
        200,
        [
            ("server", b"secret-server/9.9"),
            ("Set-Cookie", b"a=1"),
            ("x-Mixed", "ü".encode()),
            ("Set-Cookie", b"b=2"),
            ("Content-Length", b"2"),
            ("Connection", b"X-Hop"),
            ("X-Hop", b"gone"),
            ("Keep-Alive", b"1"),
        ],
        b"ok",
    ),
    "/latin1": (200, [("X-L", b"caf\xe9")], b"x"),
}


@dataclass
class ScriptedNode(work_grpc.WorkServiceServicer):
    calls: list[tuple[work_pb.CallRequest, Any]] = field(default_factory=list)

    async def Call(  # noqa: N802
        self, request: work_pb.CallRequest, context: Any
    ) -> work_pb.CallResponse:
        self.calls.append((request, dict(context.invocation_metadata())))
        status, headers, body = _ANSWERS.get(request.head.path, (200, [], b""))
        head = http_pb2.HttpResponseHead(
            status_code=status, headers=[http_pb2.HttpHeader(name=n, value=v) for n, v in headers]
        )
        return work_pb.CallResponse(head=head, body=body)


@dataclass
class Gateway:
    host: str
    port: int
    node: ScriptedNode

    async def send(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> Answer:
        host = (b"Host", f"{self.host}:{self.port}".encode())
        return await exchange(self.host, self.port, method, target, [host, *headers], body)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    scripted = ScriptedNode()  # type: ignore[abstract]
    async with gateway_before(scripted, Pki.create(tmp_path)) as url:
        host, _, port = url.removeprefix("http://").rpartition(":")
        yield Gateway(host, int(port), scripted)


SESSION = (b"X-CGN-Session", b"tok")


async def test_the_node_is_asked_for_the_request_as_the_dapp_wrote_it(gateway: Gateway) -> None:
    answer = await gateway.send(
        b"POST",
        b"/v1/dservices/svc/a%2Fb/./c?x=1&x=2&y",
        [
            SESSION,
            (b"Authorization", b"Basic YTpi"),
            (b"X-Latin1", b"caf\xe9"),
            (b"X-Dup", b"1"),
            (b"Connection", b"X-Hop"),
            (b"X-Hop", b"no"),
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"X-Dup", b"2"),
            (b"Content-Length", b"4"),
        ],
        b"body",
    )
    assert answer.status == 200
    request, metadata = gateway.node.calls[0]
    assert metadata["authorization"] == "Bearer tok"
    assert request.dservice == "svc"
    assert (request.head.method, request.head.path, request.head.query) == (
        "POST",
        "/a%2Fb/./c",
        "x=1&x=2&y",
    )
    assert [(h.name, h.value) for h in request.head.headers] == [
        ("Authorization", b"Basic YTpi"),  # the DService's own: X-CGN-Session carried the token
        ("X-Latin1", b"caf\xe9"),
        ("X-Dup", b"1"),
        ("X-Dup", b"2"),
        ("Content-Length", b"4"),
        ("X-Forwarded-For", b"127.0.0.1"),
        ("X-Forwarded-Proto", b"http"),
        ("X-Forwarded-Host", f"{gateway.host}:{gateway.port}".encode()),
        ("X-Forwarded-Prefix", b"/v1/dservices/svc"),
    ]
    assert request.body == b"body"


async def test_a_bearer_token_is_the_cgns_and_is_not_forwarded(gateway: Gateway) -> None:
    await gateway.send(b"GET", b"/v1/dservices/svc/x", [(b"Authorization", b"Bearer tok2")])
    request, metadata = gateway.node.calls[0]
    assert metadata["authorization"] == "Bearer tok2"
    assert "Authorization" not in [h.name for h in request.head.headers]


async def test_encoded_names_upgrades_and_missing_tokens_never_reach_the_node(
    gateway: Gateway,
) -> None:
    encoded = await gateway.send(b"GET", b"/v1/dservices/s%76c/x", [SESSION])
    ws = [SESSION, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    upgrade = await gateway.send(b"GET", b"/v1/dservices/svc/ws", ws)
    basic = [(b"Authorization", b"Basic YTpi")]
    basic_only = await gateway.send(b"GET", b"/v1/dservices/svc/x", basic)
    dotted = await gateway.send(b"GET", b"/v1/./dservices/svc/x", [SESSION])
    assert (encoded.status, upgrade.status, basic_only.status, dotted.status) == (
        404,
        501,
        401,
        404,
    )
    for answer in (encoded, upgrade, basic_only, dotted):
        assert answer.values(b"X-CGN-Error") == [b"1"]
    assert b"DSERVICE_NAME_ENCODED" in encoded.body
    assert b"UPGRADE_NOT_SUPPORTED" in upgrade.body
    assert gateway.node.calls == []


async def test_the_answer_is_written_exactly_as_the_dservice_sent_it(gateway: Gateway) -> None:
    head = await gateway.send(b"HEAD", b"/v1/dservices/svc/head", [SESSION])
    assert head.status == 200
    assert head.values(b"Content-Length") == [b"1234"]
    assert head.values(b"Content-Type") == []
    not_modified = await gateway.send(b"GET", b"/v1/dservices/svc/304", [SESSION])
    assert not_modified.status == 304
    assert not_modified.values(b"Content-Length") == [b"1234"]
    untyped = await gateway.send(b"GET", b"/v1/dservices/svc/untyped", [SESSION])
    assert untyped.values(b"Content-Type") == []  # none invented
    assert untyped.values(b"Content-Length") == [b"9"]
    assert untyped.body == b"raw bytes"
    ordered = await gateway.send(b"GET", b"/v1/dservices/svc/ordered", [SESSION])
    names = [n for n, _ in ordered.headers]
    assert names[:4] == [b"Set-Cookie", b"x-Mixed", b"Set-Cookie", b"Content-Length"]
    assert ordered.values(b"x-mixed") == ["ü".encode()]
    assert ordered.values(b"Server") == [b"cgn-gateway"]
    assert not {n.lower() for n in names} & {b"x-hop", b"keep-alive"}
    latin1 = await gateway.send(b"GET", b"/v1/dservices/svc/latin1", [SESSION])
    assert latin1.status == 502
    assert latin1.values(b"X-CGN-Error") == [b"1"]
