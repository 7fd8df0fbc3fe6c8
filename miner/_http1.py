"""The miner's HTTP/1.1 client of a DService: it sends exactly the request it is given.

Hand-written over asyncio streams rather than aiohttp's client, because a proxy must not be a
browser: aiohttp's client adds headers (``Accept``, ``Content-Length: 0``, ``Host`` from the
URL), keeps a cookie jar, follows redirects and writes header values as UTF-8 of ``str`` (so
raw bytes cannot pass). Here the request line and headers go out as the given bytes, in
order, duplicates kept; the answer comes back as raw bytes with its header names as the
DService spelled them; nothing is decoded, followed or remembered between requests.

Both directions are validated, so a bad message is an error, not a smuggle: the request here
(a token method, a visible-ASCII target, token header names, header values without CR, LF,
NUL or other control characters, a ``Host``, a ``Content-Length`` that is the body's length,
no ``Transfer-Encoding``: a body always goes out sized), the answer by httptools (llhttp, the
C parser of Node.js, in its strict mode) plus the head limits below. It replaced h11, whose
pure-Python state machine was most of the miner's CPU per request.

Also here: the connection pool (idle connections kept per DService, reused only when both
sides left their last message cleanly and the DService sent nothing after its answer), the
read loop and the sending of a streamed request body (:class:`StreamedBody`: a slice at a
time, as it arrives, while the answer is read). The answer to a ``HEAD`` is not framed by its
own headers, which the parser cannot be told, so its connection is closed, not kept.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import httptools

from cgn_common.descriptor import Listen
from cgn_common.logs import log_event

_log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
#: Idle connections kept per DService.
_MAX_IDLE = 32
#: Limits of an answer's head: one header line (aiohttp's and nginx's usual 8 KiB) and all.
MAX_FIELD_LINE_BYTES = 8190
MAX_HEAD_BYTES = 64 * 1024

#: RFC 9110 token (a method, a header name); a request target (visible ASCII, as h11 had it);
#: a header value: visible characters and obs-text, single spaces or tabs only between them.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
#: Up to this size a body goes out joined to its head in one write; a larger one follows it.
_JOIN_BODY = 16 * 1024


def _retrieved(task: asyncio.Future[Any]) -> None:
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


@dataclass(frozen=True)
class _Request:
    """A request's head as bytes, checked, and what the client needs to know of it."""

    head: bytes
    #: Whether the answer has a body (not for HEAD) and the connection may be kept after it.
    head_only: bool
    close: bool


def _request(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: RequestBody
) -> _Request:
    """The head of a request as it goes out, or UpstreamProtocolError (local) when HTTP/1.1
    cannot carry it as given."""
    if not _TOKEN.fullmatch(method):
        raise UpstreamProtocolError(f"illegal method {method[:40]!r}", local=True)
    if not _TARGET.fullmatch(target):
        raise UpstreamProtocolError(f"illegal target {target[:40]!r}", local=True)
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    host = close = False
    length: bytes | None = None
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise UpstreamProtocolError(f"illegal header name {name[:40]!r}", local=True)
        if not _VALUE.fullmatch(value):
            raise UpstreamProtocolError(f"illegal header value {value[:40]!r}", local=True)
        lower = name.lower()
        if lower == b"content-length":
            if not _DIGITS.fullmatch(value) or (length is not None and value != length):
                raise UpstreamProtocolError("bad Content-Length", local=True)
            length = value
        elif lower == b"host":
            host = True
        elif lower == b"transfer-encoding":
            raise UpstreamProtocolError("a request body goes out sized, not encoded", local=True)
        elif lower == b"connection" and b"close" in value.lower():
            close = True
        parts += (name, b": ", value, b"\r\n")
    if not host:
        raise UpstreamProtocolError("missing mandatory Host: header", local=True)
    size = body_size(body)
    if size != (0 if length is None else int(length)):
        raise UpstreamProtocolError(
            f"the body has {size} bytes, its Content-Length says {length!r}", local=True
        )
    parts.append(b"\r\n")
    return _Request(b"".join(parts), method == b"HEAD", close)


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


async def _send_streamed(writer: asyncio.StreamWriter, body: StreamedBody) -> bool:
    """Writes a streamed body after its head, a slice at a time: each is written out
    (``drain``) before the next is read, so the DService's reading paces the source (and gRPC
    flow control the node), and the miner holds about one slice. A DService that stops
    reading (it answered early, or closed) ends the sending quietly: the answer, or the
    connection's end, is what the read reports; so does the sender, by not returning True
    (the whole body went out)."""
    sent = 0
    try:
        async for chunk in body.chunks:
            sent += len(chunk)
            if sent > body.size:
                raise UpstreamProtocolError(f"the body exceeds its {body.size} bytes", local=True)
            if not await _write(writer, chunk):
                return False
        if sent != body.size:
            raise UpstreamProtocolError(f"the body has {sent} bytes, not {body.size}", local=True)
        return True
    finally:
        aclose = getattr(body.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _write(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Writes ``data`` out; False when the DService no longer reads."""
    try:
        writer.write(data)
        await writer.drain()
    except OSError:
        return False
    return True


class _Call:
    """One request on one connection, once its head is written: what sends its body, the
    reading and parsing of the answer (httptools calls the ``on_*`` methods), and the
    connection's end (kept for the next request, or closed).

    ``sending`` is None when the whole request went out with its head, else the drain of a
    whole body or the task writing a streamed one. The failure of a streamed body's sender is
    raised by the read waiting beside it (the DService may be waiting for the rest of the body
    and would never answer), else logged when the call ends: it is never lost.
    """

    def __init__(
        self,
        upstream: Upstream,
        connection: _Connection,
        sending: asyncio.Future[Any] | None,
        streamed: bool,
        request: _Request,
    ) -> None:
        self._upstream = upstream
        self.connection = connection
        self._sending = sending
        self._streamed = streamed
        self._head_only = request.head_only
        self._keep = not request.close
        self._raised = False
        self._ended = False
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        #: Bytes of the head's header lines so far (each name and value, plus 2), and bytes
        #: fed to the parser in all.
        self._head_bytes = 0
        self._fed = 0
        self._head_done = False
        self._complete = False
        self._chunks: list[bytes] = []
        if sending is not None:
            sending.add_done_callback(self._sent if streamed else _retrieved)

    # The parser's callbacks.

    def on_message_begin(self) -> None:
        if self._complete:  # bytes after the answer: this connection is not to be trusted
            self._keep = False

    def on_header(self, name: bytes, value: bytes) -> None:
        line = len(name) + len(value) + 2
        if line > MAX_FIELD_LINE_BYTES:
            raise UpstreamProtocolError(
                f"header {name[:40]!r} is longer than {MAX_FIELD_LINE_BYTES} bytes"
            )
        self._head_bytes += line
        if self._head_bytes > MAX_HEAD_BYTES:
            raise UpstreamProtocolError(f"headers exceed {MAX_HEAD_BYTES} bytes")
        if not self._head_done:  # else a trailer (not passed on), or after the answer
            self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the final answer follows
            self.headers = []
            self._head_bytes = 0
            return
        self.status = status
        self._head_done = True
        self._head_bytes = 0  # now counts the trailers
        if self._head_only:
            self._complete = True
            self._keep = False

    def _until_close(self) -> bool:
        """Whether the answer's framing says it ends when the connection does (it has a body,
        but neither Content-Length nor Transfer-Encoding)."""
        if self.status in (204, 304):
            return False
        framing = (b"content-length", b"transfer-encoding")
        return not any(name.lower() in framing for name, _ in self.headers)

    def on_body(self, body: bytes) -> None:
        if not self._complete:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._complete:
            return
        if self._head_done:
            self._complete = True
            self._keep = self._keep and self._parser.should_keep_alive()

    # Reading.

    def _failure(self) -> BaseException | None:
        """The streamed body's failure, once, when its sender failed."""
        task = self._sending
        if not self._streamed or task is None or not task.done() or task.cancelled():
            return None
        if self._raised:
            return None
        exc = task.exception()
        self._raised = exc is not None
        return exc

    def _sent(self, task: asyncio.Future[Any]) -> None:
        if self._ended:  # nobody reads any more: a failure now would go unseen
            self._log_failure()

    def _log_failure(self) -> None:
        if (exc := self._failure()) is not None:
            log_event(_log, "request_body_failed", logging.WARNING, exc=exc)

    async def _receive(self) -> bytes:
        """The DService's next bytes (empty at the end); a streamed body's failure first."""
        reader = self.connection.reader
        sending = self._sending
        if not self._streamed or sending is None or sending.done():
            if (exc := self._failure()) is not None:
                raise exc
            return await reader.read(_READ_SIZE)
        read = asyncio.ensure_future(reader.read(_READ_SIZE))
        try:
            either: list[asyncio.Future[Any]] = [read, sending]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not read.done() and (exc := self._failure()) is not None:
                raise exc
            return await read
        finally:
            read.cancel()  # nothing when done; a StreamReader keeps what a cancelled read had

    def _feed(self, data: bytes) -> None:
        self._fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, UpstreamProtocolError):  # raised by a callback
                raise exc.__context__ from None
            raise UpstreamProtocolError(f"the DService broke HTTP/1.1: {exc}") from None
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            raise UpstreamProtocolError(f"the DService broke HTTP/1.1: {exc}") from None

    async def head(self) -> None:
        """Reads up to the answer's head (``status`` and ``headers``)."""
        while not self._head_done:
            data = await self._receive()
            if not data:
                raise ConnectionResetError("the DService closed the connection")
            self._feed(data)
            if not self._head_done and self._fed > MAX_HEAD_BYTES:
                raise UpstreamProtocolError(f"headers exceed {MAX_HEAD_BYTES} bytes")

    async def body(self, max_body: int) -> AsyncGenerator[bytes, None]:
        """The answer's body as it arrives; then the call ends (:meth:`end`)."""
        clean = False
        size = 0
        try:
            while True:
                if self._chunks:
                    chunks = self._chunks
                    self._chunks = []
                    chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    size += len(chunk)
                    if size > max_body:
                        raise ResponseTooLargeError(f"DService answer exceeds {max_body} bytes")
                    yield chunk
                if self._complete:
                    clean = True
                    return
                data = await self._receive()
                if not data:
                    if self._until_close():  # the connection's end is the answer's
                        self._complete, self._keep, clean = True, False, True
                        return
                    # Not a ConnectionError: part of an answer came, so the request is not
                    # sent again (it reached the DService, which may have acted on it).
                    raise UpstreamProtocolError("the DService closed the connection mid-answer")
                self._feed(data)
        finally:
            self.end(clean)

    def end(self, clean: bool = False) -> None:
        """Stops sending (nothing when it is done) and keeps the connection for the next
        request when both sides finished cleanly, else closes it (cut short, or answered
        before the DService read the whole request). Only the first call counts."""
        if self._ended:
            return
        self._ended = True
        sending = self._sending
        sent = True  # a whole body: what is still buffered is checked below
        if sending is not None:
            if self._streamed:  # the sender says whether all of the body went out
                sent = sending.done() and not sending.cancelled()
                sent = sent and sending.exception() is None and sending.result() is True
            sending.cancel()
            self._log_failure()
        connection = self.connection
        if (
            clean
            and sent
            and self._keep
            and not connection.writer.transport.get_write_buffer_size()
        ):
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
        request = _request(method, target, headers, body)
        reused = None if isinstance(body, StreamedBody) else self._take()
        connection = reused or await self._connect()
        try:
            return await self._start(connection, request, body, max_body)
        except ConnectionError:
            connection.close()
            if reused is None:
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
        self, connection: _Connection, request: _Request, body: RequestBody, max_body: int
    ) -> RawStream:
        writer = connection.writer
        # Read while the request is still going out: a DService that answers as it reads (an
        # echo, a transform) would otherwise fill both socket buffers and wait for us forever.
        sending: asyncio.Future[Any] | None = None
        if isinstance(body, bytes):
            if len(body) <= _JOIN_BODY:
                writer.write(request.head + body)
            else:
                writer.write(request.head)
                writer.write(body)
            if writer.transport.get_write_buffer_size():
                sending = asyncio.ensure_future(writer.drain())
        else:
            writer.write(request.head)
            sending = asyncio.ensure_future(_send_streamed(writer, body))
        call = _Call(self, connection, sending, not isinstance(body, bytes), request)
        try:
            await call.head()
        except BaseException:
            call.end()
            raise
        return RawStream(call.status, call.headers, call.body(max_body), call.end)

    def release(self, connection: _Connection) -> None:
        """Keeps ``connection`` for the next request (its last one ended cleanly on both
        sides), else closes it when enough are kept."""
        if len(self._idle) < _MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Closes every idle connection."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()
