"""The miner's HTTP/1.1 client of a DService: it sends exactly the request it is given.

Built on h11 (python-hyper's sans-I/O HTTP/1.1 state machine) rather than aiohttp's client,
because a proxy must not be a browser: aiohttp's client adds headers (``Accept``,
``Content-Length: 0``, ``Host`` from the URL), keeps a cookie jar, follows redirects and
writes header values as UTF-8 of ``str`` (so raw bytes cannot pass). Here the request line
and headers go out as the given bytes, in order, duplicates kept; the answer comes back as
raw bytes with its header names as the DService spelled them; nothing is decoded, followed
or remembered between requests. h11 validates both directions (token method, visible-ASCII
target, no CR/LF/NUL in header values, framing), so a bad message is an error, not a smuggle.

What is hand-written: the connection pool (idle connections kept per DService, reused only
when both sides left their last message cleanly) and the read loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import h11

from cgn_common.descriptor import Listen

_READ_SIZE = 64 * 1024
#: Idle connections kept per DService.
_MAX_IDLE = 32
#: Limits of an answer's head: one header line (aiohttp's and nginx's usual 8 KiB) and all.
MAX_FIELD_LINE_BYTES = 8190
MAX_HEAD_BYTES = 64 * 1024


def _retrieved(task: asyncio.Future[None]) -> None:
    """Marks a finished write's error seen: the read that ran beside it reports the failure."""
    if not task.cancelled():
        task.exception()


class UpstreamProtocolError(Exception):
    """The DService's answer broke HTTP/1.1, or the request could not be written as HTTP/1.1
    (``local`` True: the request itself was invalid)."""

    def __init__(self, message: str, *, local: bool = False) -> None:
        super().__init__(message)
        self.local = local


class ResponseTooLargeError(Exception):
    """The DService's body exceeded the limit."""


@dataclass(frozen=True)
class RawStream:
    """A DService's answer as it arrives: status, headers as sent, then the body; ``aclose``
    ends it early (the connection is closed, not reused)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncGenerator[bytes, None]

    async def aclose(self) -> None:
        """Stops reading the body (nothing when it was read to its end)."""
        await self.body.aclose()


@dataclass(frozen=True)
class RawResponse:
    """A DService's answer: status, headers as sent (raw names and values), body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _check_head(head: h11.Response) -> None:
    total = 0
    for name, value in head.headers.raw_items():
        line = len(name) + len(value) + 2
        if line > MAX_FIELD_LINE_BYTES:
            raise UpstreamProtocolError(
                f"header {name[:40]!r} is longer than {MAX_FIELD_LINE_BYTES} bytes"
            )
        total += line
    if total > MAX_HEAD_BYTES:
        raise UpstreamProtocolError(f"headers exceed {MAX_HEAD_BYTES} bytes")


class _Connection:
    __slots__ = ("conn", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)

    def close(self) -> None:
        self.writer.close()


class Upstream:
    """Keep-alive HTTP/1.1 connections to one DService listener."""

    def __init__(self, listen: Listen) -> None:
        self._listen = listen
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        if self._listen.socket:
            reader, writer = await asyncio.open_unix_connection(self._listen.socket)
        else:
            reader, writer = await asyncio.open_connection(self._listen.host, self._listen.port)
        return _Connection(reader, writer)

    def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.writer.is_closing() and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        max_body: int,
    ) -> RawResponse:
        """Sends one request and reads the whole answer. A cancel closes the connection."""
        stream = await self.open(method, target, headers, body, max_body)
        try:
            chunks = [chunk async for chunk in stream.body]
        finally:
            await stream.aclose()
        return RawResponse(stream.status, stream.headers, b"".join(chunks))

    async def open(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        max_body: int,
    ) -> RawStream:
        """Sends one request and reads the answer's head; its body follows as it arrives
        (``RawStream.body``, at most ``max_body`` bytes). A kept connection that died before
        any answer byte is tried once more on a fresh one; nothing is sent again after the
        first answer byte (the DService got the request, and may have acted on it)."""
        try:
            request = h11.Request(method=method, target=target, headers=list(headers))
        except h11.LocalProtocolError as exc:
            raise UpstreamProtocolError(str(exc), local=True) from None
        reused = self._take()
        connection = reused or await self._connect()
        try:
            return await self._start(connection, request, body, max_body)
        except (ConnectionError, h11.RemoteProtocolError) as exc:
            connection.close()
            if reused is None or not isinstance(exc, ConnectionError):
                raise
        except BaseException:
            connection.close()
            raise
        # A kept connection the DService had closed meanwhile: once more on a fresh one.
        connection = await self._connect()
        try:
            return await self._start(connection, request, body, max_body)
        except BaseException:
            connection.close()
            raise

    async def _start(
        self, connection: _Connection, request: h11.Request, body: bytes, max_body: int
    ) -> RawStream:
        conn = connection.conn
        try:
            out = conn.send(request) or b""
            if body:
                out += conn.send(h11.Data(data=body)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            connection.close()
            raise UpstreamProtocolError(str(exc), local=True) from None
        connection.writer.write(out)
        # Read while the request is still going out: a DService that answers as it reads (an
        # echo, a transform) would otherwise fill both socket buffers and wait for us forever.
        sending = asyncio.ensure_future(connection.writer.drain())
        sending.add_done_callback(_retrieved)
        try:
            head = await self._head(connection)
        except BaseException:
            sending.cancel()
            raise
        return RawStream(
            head.status_code,
            list(head.headers.raw_items()),
            self._body(connection, sending, max_body),
        )

    @staticmethod
    def _event(connection: _Connection) -> Any:
        try:
            return connection.conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamProtocolError(f"the DService broke HTTP/1.1: {exc}") from None

    async def _head(self, connection: _Connection) -> h11.Response:
        """Reads up to the answer's head."""
        while True:
            event = self._event(connection)
            if event is h11.NEED_DATA:
                data = await connection.reader.read(_READ_SIZE)
                if not data:
                    raise ConnectionResetError("the DService closed the connection")
                connection.conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends: the final answer follows
            elif isinstance(event, h11.Response):
                _check_head(event)
                return event
            else:  # ConnectionClosed before any answer
                raise ConnectionResetError("the DService closed the connection")

    async def _body(
        self, connection: _Connection, sending: asyncio.Future[None], max_body: int
    ) -> AsyncGenerator[bytes, None]:
        """The answer's body as it arrives; then the connection is kept for the next request
        when both sides finished cleanly, else closed."""
        clean = False
        size = 0
        try:
            while True:
                event = self._event(connection)
                if event is h11.NEED_DATA:
                    connection.conn.receive_data(await connection.reader.read(_READ_SIZE))
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > max_body:
                        raise ResponseTooLargeError(f"DService answer exceeds {max_body} bytes")
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    clean = True
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    # Not a ConnectionError: part of an answer came, so the request is not
                    # sent again (it reached the DService, which may have acted on it).
                    raise UpstreamProtocolError("the DService closed the connection mid-answer")
                else:  # pragma: no cover - h11 has no other client-side events here
                    raise UpstreamProtocolError(f"unexpected HTTP event {type(event).__name__}")
        finally:
            sending.cancel()  # nothing when it is done
            if clean and not connection.writer.transport.get_write_buffer_size():
                self._release(connection)
            else:
                connection.close()  # cut short, or answered before it read the whole request

    def _release(self, connection: _Connection) -> None:
        conn = connection.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            with contextlib.suppress(h11.LocalProtocolError):
                conn.start_next_cycle()
                if len(self._idle) < _MAX_IDLE:
                    self._idle.append(connection)
                    return
        connection.close()

    def close(self) -> None:
        """Closes every idle connection."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()
