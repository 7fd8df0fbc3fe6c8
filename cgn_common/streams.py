"""Bidi stream helpers: the ordered writer every stream uses (gRPC allows one write at a time
per stream) and the first-message check of every link handshake."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cgn_common.errors import InvalidArgumentError

#: The largest body that travels inline on a miner's control stream; a larger one, request or
#: response, goes on the dispatch's data plane (``MinerLinkService.Exchange``), where it
#: delays no other unit's messages.
INLINE_BODY_BYTES = 64 * 1024
#: The size of each body slice on the data plane.
BODY_CHUNK_BYTES = 256 * 1024

#: What writing to a stream that has already ended raises.
STREAM_GONE: tuple[type[Exception], ...] = (
    grpc.aio.AioRpcError,
    grpc.aio.UsageError,
    grpc.aio.InternalError,  # e.g. ExecuteBatchError: a write to a stream closing under it
    RuntimeError,
    asyncio.InvalidStateError,
)
#: What a message still queued when its writer was stopped fails with.
STREAM_CLOSED = RuntimeError("the stream's writer was stopped")


class StreamWriter:
    """Writes messages to one stream in the order they were given (gRPC allows one write at a
    time per stream), from a task of its own that runs while messages wait.

    :meth:`post` queues a message and returns at once; :meth:`send` waits until it is written.
    A queued message is always written whole: a sender cancelled while it waits is not
    waited for, but its write is not cut (grpc.aio cancels the whole RPC when a write is
    interrupted, which would end the stream for every other unit on it).

    With ``batch``, the messages that queued up while the previous write was in progress (or
    in the same event-loop turn) go out as one: ``batch(messages)`` builds the message that
    carries them, at most ``max_batch`` at a time. One write per burst instead of one per
    message is what the peer's and our own gRPC machinery charge for (docs/performance.md).
    Once a write fails the stream is gone: every message still queued, and every later one,
    fails with that error.
    """

    def __init__(
        self,
        write: Callable[[Any], Awaitable[None]],
        *,
        batch: Callable[[list[Any]], Any] | None = None,
        max_batch: int = 64,
    ) -> None:
        self._write = write
        self._batch = batch
        self._max_batch = max_batch
        #: Messages not yet written, each with the future of a sender waiting for it (None
        #: for a posted one).
        self._queue: collections.deque[tuple[Any, asyncio.Future[None] | None]] = (
            collections.deque()
        )
        self._task: asyncio.Task[None] | None = None
        #: The error that ended the stream, once a write failed.
        self.failed: Exception | None = None

    def set_batch(self, batch: Callable[[list[Any]], Any] | None) -> None:
        """Starts (or stops) sending queued messages together (e.g. once the peer said it
        reads batches)."""
        self._batch = batch

    def post(self, message: Any) -> Exception | None:
        """Queues ``message`` and returns at once; returns the error that ended the stream
        instead when it is already gone (a later failure fails it silently: the peer learns
        of that on its own)."""
        if self.failed is not None:
            return self.failed
        self._queue.append((message, None))
        self._start()
        return None

    async def send(self, message: Any) -> None:
        """Writes ``message`` after every message queued before it; raises the stream's error
        when the write fails."""
        if self.failed is not None:
            raise self.failed
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((message, written))
        self._start()
        await written

    async def send_quietly(self, message: Any) -> Exception | None:
        """Writes ``message`` when the stream is still there; returns the error when it is
        gone (the peer learns of that on its own), for the caller to log."""
        try:
            await self.send(message)
        except STREAM_GONE as exc:
            return exc
        return None

    async def flush(self) -> None:
        """Waits until every message queued so far has been written or failed."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Writes until the queue is empty (its first step runs a loop turn after the first
        message queued, so a burst queued in one turn goes out together)."""
        taken: list[tuple[Any, asyncio.Future[None] | None]] = []
        try:
            while self._queue:
                batch = self._batch if len(self._queue) > 1 else None
                count = min(len(self._queue), self._max_batch) if batch is not None else 1
                taken = [self._queue.popleft() for _ in range(count)]
                try:
                    message = batch([m for m, _ in taken]) if batch is not None else taken[0][0]
                    await self._write(message)
                except Exception as exc:  # the stream is gone (STREAM_GONE) or broke
                    self._fail(exc, taken)
                    return
                for _, written in taken:
                    if written is not None and not written.done():
                        written.set_result(None)
                taken = []
        except asyncio.CancelledError:  # the loop is closing: no sender may wait forever
            self._fail(STREAM_CLOSED, taken)
            raise
        finally:
            self._task = None

    def _fail(self, exc: Exception, taken: list[tuple[Any, asyncio.Future[None] | None]]) -> None:
        self.failed = exc
        taken.extend(self._queue)
        self._queue.clear()
        for _, written in taken:
            if written is not None and not written.done():
                written.set_exception(exc)
                written.exception()  # its sender may have gone: never "not retrieved"


async def read_hello(context: Any, kind: str, what: str) -> Any:
    """Reads a link's first message, which must be of oneof ``kind``; otherwise aborts the
    stream with INVALID_ARGUMENT naming ``what`` was expected (the error interceptor turns
    the error into the status). Returns that oneof field."""
    first = await context.read()
    if first is grpc.aio.EOF or first.WhichOneof("kind") != kind:
        raise InvalidArgumentError(f"expected {what} first", reason="HELLO_EXPECTED")
    return getattr(first, kind)
