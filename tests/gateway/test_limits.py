"""The gateway as an attacker meets it, in process against a scripted node (a real gRPC server
with mutual TLS): slow and idle connections closed after the configured timeouts while
ordinary requests are served, header floods, oversized and endless bodies, malformed JSON and
tokens, bytes that are not HTTP. Every refusal is the JSON error shape with X-CGN-Error: 1,
never a 500, and nothing is logged at ERROR for it."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.server import start
from generated.cgn.common.v1 import http_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers.gateway import gateway_before, gateway_config
from tests.helpers.pki import Pki
from tests.helpers.wait import until

IDLE_TIMEOUT_S = 2
BODY_TIMEOUT_S = 1
CONTROL_LIMIT = 8192
WORK_LIMIT = 64 * 1024
CONNECTIONS = 200
#: A hang guard for one exchange, not a performance bound.
GUARD_S = 15.0


@dataclass
class ScriptedNode(work_grpc.WorkServiceServicer):
    """Answers every DService call 200 with the facts the test checks."""

    calls: list[tuple[work_pb.CallRequest, dict[str, Any]]] = field(default_factory=list)

    async def Call(  # noqa: N802
        self, request: work_pb.CallRequest, context: Any
    ) -> work_pb.CallResponse:
        self.calls.append((request, dict(context.invocation_metadata())))
        answer = [http_pb2.HttpHeader(name="Access-Control-Allow-Origin", value=b"*")]
        head = http_pb2.HttpResponseHead(status_code=200, headers=answer)
        return work_pb.CallResponse(head=head, body=b"ok")


@dataclass
class Gateway:
    host: str
    port: int
    node: ScriptedNode


@dataclass(frozen=True)
class Raw:
    """An answer read off a raw connection, and whether the server closed it afterwards."""

    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool

    def error(self) -> dict[str, str]:
        assert self.headers.get("x-cgn-error") == "1", self
        assert self.headers.get("content-type", "").startswith("application/json"), self
        error: dict[str, str] = json.loads(self.body)["error"]
        assert set(error) == {"code", "message", "reason"}
        return error


#: The gateway's settings in these tests: short timeouts, small limits, one CORS origin.
OPTIONS: dict[str, Any] = {
    "idle_timeout_s": IDLE_TIMEOUT_S,
    "body_timeout_s": BODY_TIMEOUT_S,
    "max_control_body_bytes": CONTROL_LIMIT,
    "max_work_body_bytes": WORK_LIMIT,
    "max_headers": 50,
    "max_header_bytes": 4096,
    "cors_allowed_origins": ["http://app.example"],
}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    scripted = ScriptedNode()  # type: ignore[abstract]
    async with gateway_before(scripted, Pki.create(tmp_path), **OPTIONS) as url:
        host, _, port = url.removeprefix("http://").rpartition(":")
        yield Gateway(host, int(port), scripted)


async def _read_answer(reader: asyncio.StreamReader) -> Raw:
    """One answer, then whether the server closes the connection (bounded)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    try:
        closed = await asyncio.wait_for(reader.read(1), GUARD_S) == b""
    except ConnectionResetError:
        closed = True
    return Raw(status, headers, body, closed)


async def _send(gw: Gateway, data: bytes) -> Raw:
    """Writes ``data`` on a new connection and reads the answer."""
    async with asyncio.timeout(GUARD_S):
        reader, writer = await asyncio.open_connection(gw.host, gw.port)
        try:
            writer.write(data)
            await writer.drain()
            return await _read_answer(reader)
        finally:
            writer.close()


def _request(
    method: str, target: str, *headers: str, body: bytes = b"", close: bool = True
) -> bytes:
    """A request; ``close`` asks the server to close after answering (tests about the
    server's own closing leave it out)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: gw", *headers]
    if close:
        lines.append("Connection: close")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _ordinary(gw: Gateway) -> float:
    """One ordinary DService call; its latency in seconds."""
    began = time.perf_counter()
    request = _request("GET", "/v1/dservices/svc/ok", "X-CGN-Session: tok")
    answer = await _send(gw, request)
    assert (answer.status, answer.body) == (200, b"ok")
    return time.perf_counter() - began


@dataclass
class _Held:
    """What one attacking connection saw."""

    closed_by_server: bool = False
    answered: bytes = b""
    held_s: float = 0.0


async def _hold(gw: Gateway, trickle: bool, connected: list[bool]) -> _Held:
    """A connection that sends a request head one header at a time (``trickle``) or nothing,
    until the server closes it."""
    seen = _Held()
    began = time.monotonic()
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    connected.append(True)
    try:
        if trickle:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
        async with asyncio.timeout(GUARD_S):
            index = 0
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(4096), 0.25)
                except TimeoutError:
                    if trickle:  # the next header line, never the blank one ending the head
                        writer.write(b"X-Slow-%d: 1\r\n" % index)
                        index += 1
                    continue
                if not data:
                    seen.closed_by_server = True
                    break
                seen.answered += data
    except (ConnectionResetError, BrokenPipeError):
        seen.closed_by_server = True
    finally:
        seen.held_s = time.monotonic() - began
        writer.close()
    return seen


async def test_slowloris_and_idle_connections_are_closed_while_requests_are_served(
    gateway: Gateway,
) -> None:
    baseline = [await _ordinary(gateway) for _ in range(5)]
    connected: list[bool] = []
    attackers = [
        asyncio.create_task(_hold(gateway, index % 2 == 0, connected))
        for index in range(2 * CONNECTIONS)
    ]
    await until(lambda: len(connected) == 2 * CONNECTIONS, "every attacker connected")
    during = [await _ordinary(gateway) for _ in range(10)]
    still_open = sum(not task.done() for task in attackers)
    held = await asyncio.gather(*attackers)
    print(
        f"ordinary request latency ms: before {max(baseline) * 1000:.1f} (max of 5), "
        f"beside {2 * CONNECTIONS} slow connections {max(during) * 1000:.1f} (max of 10)"
    )
    # The ordinary requests were served while the attackers were still connected...
    assert still_open == 2 * CONNECTIONS
    # ...and every attacker was closed by the server, unanswered, no sooner than the timeout.
    assert sum(h.closed_by_server for h in held) == 2 * CONNECTIONS
    assert [h.answered for h in held if h.answered] == []
    assert min(h.held_s for h in held) >= IDLE_TIMEOUT_S * 0.9
    await _ordinary(gateway)


async def test_a_body_that_stops_arriving_is_408_and_closed(gateway: Gateway) -> None:
    half = _request("POST", "/v1/sessions", "Content-Length: 100", close=False) + b'{"a'
    answer = await _send(gateway, half)
    assert (answer.status, answer.error()["reason"]) == (408, "BODY_TIMEOUT")
    assert answer.closed
    await _ordinary(gateway)


async def test_header_floods_are_431_json(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    many = [f"X-Flood-{i}: 1" for i in range(60)]
    long = "X-Long: " + "a" * 5000
    flood, overlong = (
        _request("GET", "/healthz", *many, close=False),
        _request("GET", "/healthz", long, close=False),
    )
    for request in (flood, overlong):
        answer = await _send(gateway, request)
        assert (answer.status, answer.error()["reason"]) == (431, "HEADERS_TOO_LARGE")
        assert answer.closed
    long_target = _request("GET", "/v1/dservices/svc/" + "a" * 5000, "X-CGN-Session: tok")
    assert (await _send(gateway, long_target)).error()["reason"] == "HEADERS_TOO_LARGE"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    await _ordinary(gateway)


async def test_an_announced_oversized_body_is_refused_before_100_continue(
    gateway: Gateway,
) -> None:
    async with asyncio.timeout(GUARD_S):
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        head = _request(
            "POST",
            "/v1/dservices/svc/up",
            "X-CGN-Session: tok",
            "Expect: 100-continue",
            f"Content-Length: {WORK_LIMIT + 1}",
            close=False,
        )
        writer.write(head)
        answer = await _read_answer(reader)  # the first answer: no 100 Continue before it
        writer.close()
    assert (answer.status, answer.error()["reason"]) == (413, "BODY_TOO_LARGE")
    assert answer.closed
    fits = _request(
        "POST", "/v1/sessions", "Expect: 100-continue", f"Content-Length: {CONTROL_LIMIT}"
    )
    async with asyncio.timeout(GUARD_S):
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        writer.write(fits)
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.close()
    odd = _request("POST", "/v1/sessions", "Expect: teapot", "Content-Length: 2", close=False)
    refused = await _send(gateway, odd)
    assert (refused.status, refused.error()["reason"]) == (417, "EXPECTATION_FAILED")
    assert gateway.node.calls == []


async def test_a_413_closes_the_connection_without_reading_the_body(gateway: Gateway) -> None:
    """The DApp keeps pushing a 1 GiB body after the 413: the gateway reads none of it and
    closes, so the push fails long before the end."""
    size = 1024**3
    head = _request(
        "POST", "/v1/dservices/svc/up", "X-CGN-Session: tok", f"Content-Length: {size}", close=False
    )
    sent = 0
    async with asyncio.timeout(GUARD_S):
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        writer.write(head)
        answer_task = asyncio.create_task(_read_answer(reader))
        chunk = b"x" * 65536
        try:
            while sent < size:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass
        answer = await answer_task
        writer.close()
    assert (answer.status, answer.error()["reason"]) == (413, "BODY_TOO_LARGE")
    assert answer.closed
    assert sent < size // 8, f"pushed {sent} bytes after the 413"
    assert gateway.node.calls == []


async def test_a_chunked_body_is_cut_at_the_limit(gateway: Gateway) -> None:
    chunk = b"%x\r\n%s\r\n" % (1024, b"y" * 1024)
    head = _request("POST", "/v1/sessions", "Transfer-Encoding: chunked", close=False)
    answer = await _send(gateway, head + chunk * (CONTROL_LIMIT // 1024 + 2))
    assert (answer.status, answer.error()["reason"]) == (413, "BODY_TOO_LARGE")
    assert answer.closed


async def test_a_whole_chunked_body_over_the_limit_is_413(gateway: Gateway) -> None:
    # Complete and small, it is all in before the handler runs: read at once, still measured.
    chunk = b"%x\r\n%s\r\n" % (1024, b"y" * 1024)
    head = _request("POST", "/v1/sessions", "Transfer-Encoding: chunked", close=False)
    answer = await _send(gateway, head + chunk * (CONTROL_LIMIT // 1024 + 1) + b"0\r\n\r\n")
    assert (answer.status, answer.error()["reason"]) == (413, "BODY_TOO_LARGE")
    assert answer.closed


@pytest.mark.parametrize(
    "body",
    [
        b'{"account_id": "\\ud800", "api_key": "k"}',
        b'{"account_id": "a", "api_key": "\\udfff\\ud800"}',
        b"[" * 1000 + b"]" * 1000,
        b'{"a": ' * 1000 + b"1" + b"}" * 1000,
        b"1" * 4000,
    ],
    ids=["lone-surrogate", "reversed-surrogates", "nested-arrays", "nested-objects", "digits"],
)
async def test_malformed_session_json_is_400(
    gateway: Gateway, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await _send(gateway, _request("POST", "/v1/sessions", body=body))
    assert answer.status == 400
    assert answer.error()["code"] == "INVALID_ARGUMENT"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(
    ("method", "target", "header"),
    [
        ("GET", "/v1/dservices/svc/x", b"Authorization: Bearer t\xc3\xa9"),
        ("GET", "/v1/dservices/svc/x", b"X-CGN-Session: \xff\xfe"),
        ("DELETE", "/v1/sessions", b"Authorization: Bearer \xe9"),
        ("GET", "/v1/ledger/requests/r1", b"Authorization: Bearer a\x80b"),
    ],
)
async def test_non_ascii_tokens_are_401_without_asking_the_node(
    gateway: Gateway, method: str, target: str, header: bytes
) -> None:
    head = f"{method} {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n".encode()
    request = head + header + b"\r\n\r\n"
    answer = await _send(gateway, request)
    assert (answer.status, answer.error()["reason"]) == (401, "SESSION_INVALID")
    assert gateway.node.calls == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"G\xc3\x89T /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET /v1/dservices/svc/\xc3\xa9 HTTP/1.1\r\nHost: gw\r\nX-CGN-Session: tok\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nBad Header: x\r\n\r\n",
    ],
    ids=["utf8-method", "utf8-path", "utf8-dservice-path", "tls", "version", "header-name"],
)
async def test_bytes_that_are_not_http_get_a_json_400_and_no_error_log(
    gateway: Gateway, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await _send(gateway, request_bytes)
    assert answer.status in (400, 404), answer
    assert answer.error()["reason"] in ("BAD_HTTP_REQUEST", "NO_ROUTE", "INVALID_ARGUMENT")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert gateway.node.calls == []
    await _ordinary(gateway)


async def test_a_known_path_with_another_method_is_405_with_allow(gateway: Gateway) -> None:
    get = await _send(gateway, _request("GET", "/v1/sessions"))
    assert (get.status, get.error()["reason"]) == (405, "METHOD_NOT_ALLOWED")
    assert get.headers["allow"] == "DELETE, POST"
    put = await _send(gateway, _request("PUT", "/healthz"))
    assert (put.status, put.headers["allow"]) == (405, "GET, HEAD")
    # A method aiohttp's parser (llhttp) does not know is refused before routing.
    brew = await _send(gateway, _request("BREW", "/v1/dservices/svc/x", "X-CGN-Session: t"))
    assert (brew.status, brew.error()["reason"]) == (400, "BAD_HTTP_REQUEST")
    assert "method" in brew.error()["message"]
    nowhere = await _send(gateway, _request("GET", "/nowhere"))
    assert (nowhere.status, nowhere.error()["reason"]) == (404, "NO_ROUTE")
    # Any method a DService may understand passes on to it.
    propfind = await _send(gateway, _request("PROPFIND", "/v1/dservices/svc/x", "X-CGN-Session: t"))
    assert propfind.status == 200
    assert gateway.node.calls[-1][0].head.method == "PROPFIND"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
async def test_the_auth_scheme_is_case_insensitive(gateway: Gateway, scheme: str) -> None:
    auth = f"Authorization: {scheme} tok-{scheme}"
    answer = await _send(gateway, _request("GET", "/v1/dservices/svc/x", auth))
    assert answer.status == 200
    assert gateway.node.calls[-1][1]["authorization"] == f"Bearer tok-{scheme}"


async def test_an_unreachable_node_is_503_without_its_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        runner, node, url = await start(gateway_config(address, Pki.create(tmp_path), **OPTIONS))
        try:
            host, _, port = url.removeprefix("http://").rpartition(":")
            gw = Gateway(host, int(port), ScriptedNode())  # type: ignore[abstract]
            body = b'{"account_id": "a", "api_key": "k"}'
            answer = await _send(gw, _request("POST", "/v1/sessions", body=body))
            call = await _send(gw, _request("GET", "/v1/dservices/svc/x", "X-CGN-Session: t"))
        finally:
            await runner.cleanup()
            await node.close()
    for got in (answer, call):
        assert (got.status, got.error()["reason"]) == (503, "NODE_UNAVAILABLE")
        assert got.headers["retry-after"] == "1"
        assert address.split(":")[1].encode() not in got.body
        assert b"127.0.0.1" not in got.body
        assert b"ipv4" not in got.body
    assert any(r.getMessage() == "node_call_failed" for r in caplog.records)


async def test_cors_preflights_need_no_token_and_only_allowed_origins_pass(
    gateway: Gateway,
) -> None:
    ask = ("Access-Control-Request-Method: POST", "Access-Control-Request-Headers: content-type")
    ok = await _send(
        gateway, _request("OPTIONS", "/v1/sessions", "Origin: http://app.example", *ask)
    )
    assert ok.status == 204
    assert ok.headers["access-control-allow-origin"] == "http://app.example"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "content-type" in ok.headers["access-control-allow-headers"].lower()
    assert ok.headers["access-control-max-age"] == "600"
    other = await _send(
        gateway, _request("OPTIONS", "/v1/sessions", "Origin: http://evil.example", *ask)
    )
    assert (other.status, other.error()["reason"]) == (403, "CORS_REFUSED")
    assert not [h for h in other.headers if h.startswith("access-control-")]
    odd = ("Access-Control-Request-Method: POST", "Access-Control-Request-Headers: x-secret")
    refused = await _send(
        gateway, _request("OPTIONS", "/v1/sessions", "Origin: http://app.example", *odd)
    )
    assert refused.status == 403
    # A DService's preflight is the gateway's too: the DService never sees it.
    dservice = await _send(
        gateway,
        _request(
            "OPTIONS",
            "/v1/dservices/svc/x",
            "Origin: http://app.example",
            "Access-Control-Request-Method: PUT",
            "Access-Control-Request-Headers: x-cgn-session",
        ),
    )
    assert dservice.status == 204
    assert gateway.node.calls == []


async def test_answers_to_allowed_origins_are_readable_and_others_untouched(
    gateway: Gateway,
) -> None:
    origin = "Origin: http://app.example"
    error = await _send(gateway, _request("GET", "/v1/dservices/svc/x", origin))
    assert error.status == 401
    assert error.headers["access-control-allow-origin"] == "http://app.example"
    assert "X-CGN-Error" in error.headers["access-control-expose-headers"]
    # The DService's own "*" gives way to the gateway's answer for this origin.
    proxied = await _send(
        gateway, _request("GET", "/v1/dservices/svc/x", origin, "X-CGN-Session: t")
    )
    assert proxied.headers["access-control-allow-origin"] == "http://app.example"
    assert proxied.headers["vary"] == "Origin"
    other = await _send(
        gateway,
        _request("GET", "/v1/dservices/svc/x", "Origin: http://evil.example", "X-CGN-Session: t"),
    )
    assert other.headers["access-control-allow-origin"] == "*"  # the DService's, as it sent it


@pytest.mark.parametrize(
    "request_bytes",
    [
        _request("POST", "/v1/sessions", "Transfer-Encoding: chunked", close=False)
        + b"zz\r\nabc\r\n0\r\n\r\n",
        _request("POST", "/v1/sessions", "Content-Length: abc", close=False),
        _request("POST", "/v1/sessions", "Content-Length: 5", "Transfer-Encoding: chunked")
        + b"0\r\n\r\n",
        _request("POST", "/v1/sessions", "Content-Encoding: gzip", body=b"not gzip at all"),
    ],
    ids=["chunk-size", "content-length", "both-framings", "gzip-that-is-not"],
)
async def test_a_malformed_body_is_a_json_400_and_no_error_log(
    gateway: Gateway, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await _send(gateway, request_bytes)
    assert answer.status == 400
    assert answer.error()["code"] == "INVALID_ARGUMENT"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_compressed_upload_reaches_the_node_as_sent(gateway: Gateway) -> None:
    packed = gzip.compress(b"hello " * 100)
    request = _request(
        "POST", "/v1/dservices/svc/x", "X-CGN-Session: t", "Content-Encoding: gzip", body=packed
    )
    assert (await _send(gateway, request)).status == 200
    assert gateway.node.calls[-1][0].body == packed
