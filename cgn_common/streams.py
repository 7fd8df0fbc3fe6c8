"""Bidi stream helpers: the locked writer every stream uses (gRPC allows one write at a time
per stream) and the first-message check of every link handshake."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cgn_common.errors import InvalidArgumentError


class StreamWriter:
    """Serializes writes to one stream (a servicer context or a client call)."""

    def __init__(self, write: Callable[[Any], Awaitable[None]]) -> None:
        self._write = write
        self._lock = asyncio.Lock()

    async def send(self, message: Any) -> None:
        """Writes ``message`` once the previous write finished."""
        async with self._lock:
            await self._write(message)


async def read_hello(context: Any, kind: str, what: str) -> Any:
    """Reads a link's first message, which must be of oneof ``kind``; otherwise aborts the
    stream with INVALID_ARGUMENT naming ``what`` was expected (the error interceptor turns
    the error into the status). Returns that oneof field."""
    first = await context.read()
    if first is grpc.aio.EOF or first.WhichOneof("kind") != kind:
        raise InvalidArgumentError(f"expected {what} first", reason="HELLO_EXPECTED")
    return getattr(first, kind)
