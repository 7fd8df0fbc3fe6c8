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
when both sides left their last message cleanly), the read loop and the sending of a streamed
request body (:class:`StreamedBody`: a slice at a time, as it arrives, while the answer is
read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import h11

from cgn_common.descriptor import Listen
from cgn_common.logs import log_event

_log = logging.getLogger(__name__)

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


def _nothing() -> None:
    pass


class UpstreamProtocolError(Exception):
    """The DService's answer broke HTTP/1.1, or the request could not be written as HTTP/1.1
    (``local`` True: the request itself was invalid)."""

    def __init__(self, message: str, *, local: bool = False) -> None:
        super().__init__(message)
        self.local = local


class ResponseTooLargeError(Exception):
    """The DService's body exceeded the limit."""


@dataclass(frozen=True)
class StreamedBody:
    """A request body sent as it arrives: ``size`` bytes in all (the request's
    Content-Length), read from ``chunks`` a slice at a time, each written to the DService
    before the next is read. It can be read only once, so a request carrying one is never
    sent again; a failure of ``chunks`` (the source broke, or its size is not ``size``) fails
    the request."""

    size: int
    chunks: AsyncIterator[bytes]


#: A request body: whole (``bytes``), or streamed.
RequestBody: TypeAlias = bytes | StreamedBody


def body_size(body: RequestBody) -> int:
    """The number of bytes ``body`` holds, or will have sent."""
    return len(body) if isinstance(body, bytes) else body.size


@dataclass(frozen=True)
class RawStream:
    """A DService's answer as it arrives: status, headers as sent, then the body; ``aclose``
    ends it early (the connection is closed, not reused)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncGenerator[bytes, None]
    #: Ends the call if reading ``body`` did not (it was never started, or cut short).
    end: Callable[[], None] = _nothing

    async def aclose(self) -> None:
        """Stops reading the body (nothing when it was read to its end)."""
        await self.body.aclose()
        self.end()


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


async def _send_streamed(connection: _Connection, body: StreamedBody) -> None:
    """Writes a streamed body after its head, a slice at a time: each is written out
    (``drain``) before the next is read, so the DService's reading paces the source (and gRPC
    flow control the node), and the miner holds about one slice. A DService that stops
    reading (it answered early, or closed) ends the sending quietly: the answer, or the
    connection's end, is what the read reports."""
    conn, writer = connection.conn, connection.writer
    sent = 0
    try:
        async for chunk in body.chunks:
            sent += len(chunk)
            if sent > body.size:
                raise UpstreamProtocolError(f"the body exceeds its {body.size} bytes", local=True)
            if not await _write(writer, _framed(conn, h11.Data(data=chunk))):
                return
        if sent != body.size:
            raise UpstreamProtocolError(f"the body has {sent} bytes, not {body.size}", local=True)
        await _write(writer, _framed(conn, h11.EndOfMessage()))
    finally:
        aclose = getattr(body.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _framed(conn: h11.Connection, event: h11.Data | h11.EndOfMessage) -> list[bytes]:
    """``event`` as bytes to write (a slice of data is passed through, not copied)."""
    try:
        return conn.send_with_data_passthrough(event) or []
    except h11.LocalProtocolError as exc:
        raise UpstreamProtocolError(str(exc), local=True) from None


async def _write(writer: asyncio.StreamWriter, parts: list[bytes]) -> bool:
    """Writes ``parts`` out; False when the DService no longer reads."""
    try:
        writer.writelines(parts)
        await writer.drain()
    except OSError:
        return False
    return True


class _Call:
    """One request on one connection, once its head is written: what sends its body, the
    reading of the answer, and the connection's end (kept for the next request, or closed).

    ``sending`` is the drain of a whole body, or the task writing a streamed one. The failure
    of a streamed body's sender is raised by the read waiting beside it (the DService may be
    waiting for the rest of the body and would never answer), else logged when the call ends:
    it is never lost.
    """

    def __init__(
        self,
        upstream: Upstream,
        connection: _Connection,
        sending: asyncio.Future[None],
        streamed: bool,
    ) -> None:
        self._upstream = upstream
        self.connection = connection
        self._sending = sending
        self._streamed = streamed
        self._raised = False
        self._ended = False
        if streamed:
            sending.add_done_callback(self._sent)
        else:
            sending.add_done_callback(_retrieved)

    def _failure(self) -> BaseException | None:
        """The streamed body's failure, once, when its sender failed."""
        task = self._sending
        if not self._streamed or not task.done() or task.cancelled() or self._raised:
            return None
        exc = task.exception()
        self._raised = exc is not None
        return exc

    def _sent(self, task: asyncio.Future[None]) -> None:
        if self._ended:  # nobody reads any more: a failure now would go unseen
            self._log_failure()

    def _log_failure(self) -> None:
        if (exc := self._failure()) is not None:
            log_event(_log, "request_body_failed", logging.WARNING, exc=exc)

    async def _receive(self) -> bytes:
        """The DService's next bytes (empty at the end); a streamed body's failure first."""
        reader = self.connection.reader
        if (exc := self._failure()) is not None:
            raise exc
        if not self._streamed or self._sending.done():
            return await reader.read(_READ_SIZE)
        read = asyncio.ensure_future(reader.read(_READ_SIZE))
        try:
            either: list[asyncio.Future[Any]] = [read, self._sending]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not read.done() and (exc := self._failure()) is not None:
                raise exc
            return await read
        finally:
            read.cancel()  # nothing when done; a StreamReader keeps what a cancelled read had

    def _event(self) -> Any:
        try:
            return self.connection.conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamProtocolError(f"the DService broke HTTP/1.1: {exc}") from None

    async def head(self) -> h11.Response:
        """Reads up to the answer's head."""
        while True:
            event = self._event()
            if event is h11.NEED_DATA:
                data = await self._receive()
                if not data:
                    raise ConnectionResetError("the DService closed the connection")
                self.connection.conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends: the final answer follows
            elif isinstance(event, h11.Response):
                _check_head(event)
                return event
            else:  # ConnectionClosed before any answer
                raise ConnectionResetError("the DService closed the connection")

    async def body(self, max_body: int) -> AsyncGenerator[bytes, None]:
        """The answer's body as it arrives; then the call ends (:meth:`end`)."""
        clean = False
        size = 0
        try:
            while True:
                event = self._event()
                if event is h11.NEED_DATA:
                    self.connection.conn.receive_data(await self._receive())
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
            self.end(clean)

    def end(self, clean: bool = False) -> None:
        """Stops sending (nothing when it is done) and keeps the connection for the next
        request when both sides finished cleanly, else closes it (cut short, or answered
        before the DService read the whole request). Only the first call counts."""
        if self._ended:
            return
        self._ended = True
        self._sending.cancel()
        self._log_failure()
        connection = self.connection
        if clean and not connection.writer.transport.get_write_buffer_size():
            self._upstream.release(connection)
        else:
            connection.close()


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
        body: RequestBody,
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
        body: RequestBody,
        max_body: int,
    ) -> RawStream:
        """Sends one request and reads the answer's head; its body follows as it arrives
        (``RawStream.body``, at most ``max_body`` bytes). A kept connection that died before
        any answer byte is tried once more on a fresh one; nothing is sent again after the
        first answer byte (the DService got the request, and may have acted on it).

        A :class:`StreamedBody` goes out while the answer is read, and its sender's failure
        fails the call at once. It can be read only once, so it always takes a fresh
        connection (a kept one may have died while idle, and would need the second try that
        a streamed body cannot have), and is never sent again."""
        try:
            request = h11.Request(method=method, target=target, headers=list(headers))
        except h11.LocalProtocolError as exc:
            raise UpstreamProtocolError(str(exc), local=True) from None
        reused = None if isinstance(body, StreamedBody) else self._take()
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
        self, connection: _Connection, request: h11.Request, body: RequestBody, max_body: int
    ) -> RawStream:
        conn = connection.conn
        try:
            out = conn.send(request) or b""
            if isinstance(body, bytes):
                if body:
                    out += conn.send(h11.Data(data=body)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            connection.close()
            raise UpstreamProtocolError(str(exc), local=True) from None
        connection.writer.write(out)
        # Read while the request is still going out: a DService that answers as it reads (an
        # echo, a transform) would otherwise fill both socket buffers and wait for us forever.
        sending: asyncio.Future[None]
        if isinstance(body, bytes):
            sending = asyncio.ensure_future(connection.writer.drain())
        else:
            sending = asyncio.ensure_future(_send_streamed(connection, body))
        call = _Call(self, connection, sending, streamed=not isinstance(body, bytes))
        try:
            head = await call.head()
        except BaseException:
            call.end()
            raise
        return RawStream(
            head.status_code, list(head.headers.raw_items()), call.body(max_body), call.end
        )

    def release(self, connection: _Connection) -> None:
        """Keeps ``connection`` for the next request when both sides finished their last
        message, else closes it."""
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
