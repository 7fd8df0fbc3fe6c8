"""The miner's side of byte-exact proxying, in process against a scripted DService (a raw
loopback socket that records the bytes it gets and answers scripted bytes): nothing added,
nothing decoded, no redirect followed, no cookie kept; then a real DService process from a
descriptor on a Unix socket, its output in the miner's log."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cgn_common.descriptor import Listen, parse_descriptor
from cgn_common.errors import UnavailableError
from miner._http1 import StreamedBody, Upstream, UpstreamProtocolError
from miner.runtime import DServiceProcess, request_headers, response_headers

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Scripted:
    """A loopback server: records each request's raw bytes, answers the next scripted one."""

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    answers: list[bytes] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.received.append(head + body)
                answer = self.answers.pop(0)
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    state = Scripted()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


async def _call(
    s: Scripted,
    upstream: Upstream,
    method: bytes,
    target: bytes,
    headers: list[tuple[str, bytes]],
    body: bytes = b"",
) -> tuple[int, list[tuple[str, bytes]], bytes]:
    send = request_headers(headers, f"127.0.0.1:{s.port}", len(body))
    raw = await upstream.request(method, target, send, body, 1 << 20)
    return raw.status, response_headers(raw.headers), raw.body


async def test_the_request_goes_out_exactly_as_given(scripted: Scripted) -> None:
    scripted.answers.append(b"HTTP/1.1 204 No Content\r\n\r\n")
    upstream = Upstream(Listen(port=scripted.port))
    headers = [
        ("x-lower", b"1"),
        ("X-Latin1", b"caf\xe9"),
        ("X-Utf8", "naïve ☕".encode()),
        ("X-Dup", b"a"),
        ("Host", b"gateway.example"),  # the miner writes its listener's address instead
        ("X-Dup", b"b"),
        ("Connection", b"X-Secret-Hop"),
        ("X-Secret-Hop", b"never"),
        ("Keep-Alive", b"timeout=1"),
        ("X-CGN-Session", b"token"),
    ]
    status, _, _ = await _call(scripted, upstream, b"POST", b"/p/caf%C3%A9?a=1&a=2", headers)
    assert status == 204
    assert scripted.received[0] == (
        b"POST /p/caf%C3%A9?a=1&a=2 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{scripted.port}\r\n".encode()
        + b"x-lower: 1\r\nX-Latin1: caf\xe9\r\n"
        + "X-Utf8: naïve ☕\r\n".encode()
        + b"X-Dup: a\r\nX-Dup: b\r\n\r\n"
    )  # no Accept, no Content-Length: 0, no User-Agent: nothing added
    upstream.close()


async def test_a_body_is_framed_as_sent_or_with_its_length(scripted: Scripted) -> None:
    scripted.answers += [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"] * 2
    upstream = Upstream(Listen(port=scripted.port))
    await _call(scripted, upstream, b"PUT", b"/a", [("Content-Length", b"3"), ("X", b"y")], b"abc")
    await _call(scripted, upstream, b"PUT", b"/b", [("X", b"y")], b"abc")
    assert scripted.received[0].endswith(b"Content-Length: 3\r\nX: y\r\n\r\nabc")
    assert scripted.received[1].endswith(b"X: y\r\nContent-Length: 3\r\n\r\nabc")
    assert scripted.connections == 1  # kept alive and reused
    upstream.close()


async def test_the_answer_comes_back_raw_and_nothing_is_followed(scripted: Scripted) -> None:
    zipped = gzip.compress(b"hello", mtime=0)
    scripted.answers += [
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/secret\r\n"
        b"Set-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nX-Bytes: caf\xe9\r\n"
        + b"Transfer-Encoding: chunked\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n"
        + f"{len(zipped):x}\r\n".encode()
        + zipped
        + b"\r\n0\r\n\r\n",
    ]
    upstream = Upstream(Listen(port=scripted.port))
    status, headers, body = await _call(scripted, upstream, b"GET", b"/r", [])
    assert status == 302
    assert headers == [
        ("Location", b"http://127.0.0.1:1/secret"),
        ("Set-Cookie", b"a=1"),
        ("set-cookie", b"b=2"),
        ("Content-Length", b"0"),
    ]
    status, headers, body = await _call(scripted, upstream, b"GET", b"/z", [])
    assert status == 200
    assert body == zipped  # not decompressed
    assert headers == [("Content-Encoding", b"gzip"), ("X-Bytes", b"caf\xe9")]
    # The redirect was not followed, and the cookies were not kept for the next request.
    assert len(scripted.received) == 2
    assert b"cookie" not in scripted.received[1].lower()
    upstream.close()


async def test_head_keeps_its_framing_and_bad_answers_are_errors(scripted: Scripted) -> None:
    scripted.answers += [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ]
    upstream = Upstream(Listen(port=scripted.port))
    status, headers, body = await _call(scripted, upstream, b"HEAD", b"/h", [])
    assert (status, body) == (200, b"")
    assert ("Content-Length", b"1234") in headers
    with pytest.raises(UpstreamProtocolError, match="longer than 8190"):
        await _call(scripted, upstream, b"GET", b"/huge", [])
    with pytest.raises(UpstreamProtocolError, match=r"broke HTTP/1\.1"):
        await _call(scripted, upstream, b"GET", b"/junk", [])
    upstream.close()


async def test_interim_answers_are_skipped_and_only_clean_connections_are_kept(
    scripted: Scripted,
) -> None:
    """A 100 Continue before the answer is passed over; an answer that ends with its
    connection is read to that end; a connection is kept only after an answer its framing
    ended, with nothing after it (a HEAD's answer is framed by the request, which the parser
    cannot be told, so its connection goes too)."""
    scripted.answers += [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-A: 1\r\n\r\nto the end",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-Trailing-Space: a  \r\n\r\n",
    ]
    upstream = Upstream(Listen(port=scripted.port))
    try:
        assert (await _call(scripted, upstream, b"GET", b"/1", []))[0::2] == (200, b"ok")
        assert await _call(scripted, upstream, b"GET", b"/2", []) == (
            200,
            [("X-A", b"1")],
            b"to the end",
        )
        assert scripted.connections == 1  # /1's connection was kept, then closed by /2
        assert (await _call(scripted, upstream, b"GET", b"/3", []))[2] == b"ok"
        assert scripted.connections == 2
        assert (await _call(scripted, upstream, b"HEAD", b"/4", []))[2] == b""
        assert scripted.connections == 3  # /3's was not kept: bytes came after its answer
        status, headers, _ = await _call(scripted, upstream, b"GET", b"/5", [])
        assert (status, headers) == (204, [("X-Trailing-Space", b"a")])
        assert scripted.connections == 4  # nor /4's, a HEAD
    finally:
        upstream.close()


async def test_a_request_http_cannot_carry_is_refused_before_sending(scripted: Scripted) -> None:
    upstream = Upstream(Listen(port=scripted.port))
    for method, target, headers in (
        (b"GE T", b"/", []),
        (b"GET", b"/a b", []),
        (b"GET", b"/", [("X-A", b"a\r\nX-Injected: 1")]),
        (b"GET", b"/", [("X-A", b"nul\x00")]),
    ):
        with pytest.raises(UpstreamProtocolError) as info:
            await _call(scripted, upstream, method, target, headers)
        assert info.value.local
    assert scripted.received == []
    upstream.close()


async def test_a_dservice_from_its_descriptor_on_a_unix_socket_logs_its_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The command prints its socket argument, then runs echo (which reads CGN_LISTEN).
    script = (
        "import sys, runpy; print('socket arg', sys.argv[1], flush=True); "
        "runpy.run_module('dservices.echo', run_name='__main__')"
    )
    descriptor = f"""
name = "echo-uds"
version = "2.0.0"
[process]
listen = "unix"
command = [{json.dumps(sys.executable)}, "-c", {json.dumps(script)}, "{{socket}}"]
env = {{ PYTHONPATH = {json.dumps(str(ROOT))} }}
"""
    loaded = parse_descriptor(descriptor, "test", tmp_path)
    dservice = DServiceProcess(loaded, tmp_path / "state")
    caplog.set_level(logging.INFO, logger="miner.runtime")
    await dservice.start()
    try:
        assert dservice.listen.socket.endswith("http.sock")
        answer = await dservice.call("POST", "/x", "q=1", [("Content-Type", b"a/b")], b"body")
        assert answer.status == 200
        assert answer.body == b"body"
        names = dict(answer.headers)["X-Echo-Header-Names"].decode().split(",")
        assert "host" in names
        assert "content-length" in names
    finally:
        await dservice.stop()
    outputs = [r for r in caplog.records if r.getMessage() == "dservice_output"]
    lines = [(r.__dict__["dservice"], r.__dict__["stream"], r.__dict__["line"]) for r in outputs]
    assert ("echo-uds", "stdout", f"socket arg {dservice.listen.socket}") in lines
    assert json.dumps(lines)  # plain values, fit for the JSON log


async def test_an_answer_cut_mid_way_is_an_error_and_the_request_is_not_sent_again(
    scripted: Scripted,
) -> None:
    """A kept connection that dies before any answer byte is retried once on a fresh one;
    one that dies after part of the answer is not: the DService got the request and may have
    acted on it (a POST must not run twice)."""
    scripted.answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\npartial",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ]
    upstream = Upstream(Listen(host="127.0.0.1", port=scripted.port))
    try:
        assert (await _call(scripted, upstream, b"POST", b"/one", [], b"1"))[2] == b"ok"
        with pytest.raises(UpstreamProtocolError):
            await _call(scripted, upstream, b"POST", b"/two", [], b"2")
        assert len(scripted.received) == 2  # /two reached the DService once, not twice
    finally:
        upstream.close()


async def test_a_dservice_that_answers_while_it_reads_gets_a_large_body_without_deadlock() -> None:
    """An echo that streams its answer as it reads the request (as aiohttp's or a transform
    service may): the miner must read while it still writes, or both socket buffers fill and
    each side waits for the other forever (a 24 MiB body through the echo DService hung)."""
    size = 24 * 1024 * 1024

    async def streaming_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        left = size
        while left:
            data = await reader.read(min(left, 65536))
            left -= len(data)
            writer.write(data)
            await writer.drain()  # blocks while the miner does not read
        writer.close()

    server = await asyncio.start_server(streaming_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = Upstream(Listen(host="127.0.0.1", port=port))
    body = bytes(range(256)) * (size // 256)
    try:
        send = request_headers([], f"127.0.0.1:{port}", len(body))
        raw = await asyncio.wait_for(upstream.request(b"POST", b"/", send, body, size), 30)
        assert raw.body == body
    finally:
        upstream.close()
        server.close()
        await server.wait_closed()


async def _slices(parts: list[bytes], failure: Exception | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if failure is not None:
        raise failure


async def test_a_streamed_body_goes_on_a_fresh_connection_and_its_failure_surfaces(
    scripted: Scripted,
) -> None:
    """A streamed body can be read once: it never takes a kept connection (which may have
    died while idle and need a second try); a source that fails, or ends short of its size,
    fails the request at once, while the DService still waits for the rest of the body."""
    scripted.answers += [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * 2
    upstream = Upstream(Listen(port=scripted.port))
    parts = [b"a" * 100_000, b"b" * 100_000]
    try:
        await _call(scripted, upstream, b"POST", b"/inline", [], b"1")  # kept idle after
        body = StreamedBody(200_000, _slices(parts))
        send = request_headers([], f"127.0.0.1:{scripted.port}", body.size)
        raw = await upstream.request(b"POST", b"/streamed", send, body, 1 << 20)
        assert raw.body == b"ok"
        assert scripted.received[1].endswith(b"Content-Length: 200000\r\n\r\n" + b"".join(parts))
        assert scripted.connections == 2  # not the kept one

        send = request_headers([], f"127.0.0.1:{scripted.port}", 300_000)
        async with asyncio.timeout(10):
            broken = StreamedBody(300_000, _slices(parts, UnavailableError("the source broke")))
            with pytest.raises(UnavailableError, match="the source broke"):
                await upstream.request(b"POST", b"/broken", send, broken, 1 << 20)
            short = StreamedBody(300_000, _slices(parts))
            with pytest.raises(UpstreamProtocolError, match="200000 bytes, not 300000") as info:
                await upstream.request(b"POST", b"/short", send, short, 1 << 20)
            assert info.value.local
        assert len(scripted.received) == 2  # neither reached the DService whole
    finally:
        upstream.close()
