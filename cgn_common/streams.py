"""Bidi stream helpers: the locked writer every stream uses (gRPC allows one write at a time
per stream) and the first-message check of every link handshake."""

from __future__ import annotations

import asyncio
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


class StreamWriter:
    """Serializes writes to one stream (a servicer context or a client call)."""

    def __init__(self, write: Callable[[Any], Awaitable[None]]) -> None:
        self._write = write
        self._lock = asyncio.Lock()

    async def send(self, message: Any) -> None:
        """Writes ``message`` once the previous write finished.

        A sender cancelled mid-write (a unit cancelled while its result goes out) does not cut
        the write short: grpc.aio cancels the whole RPC when a write is interrupted, which
        would end the stream for every other unit on it. The write finishes in its own task;
        the cancellation reaches the sender after it.
        """
        async with self._lock:
            write = asyncio.ensure_future(self._write(message))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await asyncio.wait({write})
                if not write.cancelled():
                    write.exception()  # the sender is gone: nobody else would look at it
                raise

    async def send_quietly(self, message: Any) -> Exception | None:
        """Writes ``message`` when the stream is still there; returns the error when it is
        gone (the peer learns of that on its own), for the caller to log."""
        try:
            await self.send(message)
        except STREAM_GONE as exc:
            return exc
        return None


async def read_hello(context: Any, kind: str, what: str) -> Any:
    """Reads a link's first message, which must be of oneof ``kind``; otherwise aborts the
    stream with INVALID_ARGUMENT naming ``what`` was expected (the error interceptor turns
    the error into the status). Returns that oneof field."""
    first = await context.read()
    if first is grpc.aio.EOF or first.WhichOneof("kind") != kind:
        raise InvalidArgumentError(f"expected {what} first", reason="HELLO_EXPECTED")
    return getattr(first, kind)
