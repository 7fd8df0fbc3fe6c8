"""The locked writer every bidi stream uses: gRPC allows one write at a time per stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class StreamWriter:
    """Serializes writes to one stream (a servicer context or a client call)."""

    def __init__(self, write: Callable[[Any], Awaitable[None]]) -> None:
        self._write = write
        self._lock = asyncio.Lock()

    async def send(self, message: Any) -> None:
        """Writes ``message`` once the previous write finished."""
        async with self._lock:
            await self._write(message)
