"""Where a streamed request body waits while its work unit runs, so that a re-dispatch (the
miner died before the first answer byte left the node, SPEC 15) can send it again.

Small bodies stay in memory; from ``memory_bytes`` on, the whole body moves to a temporary
file that is unlinked as soon as it is created (nothing is left behind, even by a crash), and
every file operation runs on a worker thread, so a slow disk never stalls the event loop.
The node's total spool on disk is bounded by a :class:`SpoolBudget`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator

from cgn_common.errors import ResourceExhaustedError
from cgn_common.streams import BODY_CHUNK_BYTES

#: Bodies up to this size are spooled in memory.
SPOOL_MEMORY_BYTES = 1024 * 1024


class SpoolFullError(ResourceExhaustedError):
    """The node's spool budget is used up by bodies in flight."""

    reason = "SPOOL_FULL"


class SpoolBudget:
    """The disk the node lets request bodies take at once (``cgn node --max-spool-bytes``);
    a body that would pass it is refused with RESOURCE_EXHAUSTED (retry later)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.max_bytes:
            raise SpoolFullError(
                "the node is holding as many request bodies as it can; try again shortly"
            )
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size


class Spool:
    """One request body, written once (:meth:`write` until it is whole), then read from the
    start as often as needed (:meth:`slices`), concurrently too; :meth:`close` frees it."""

    def __init__(
        self,
        budget: SpoolBudget | None = None,
        *,
        memory_bytes: int = SPOOL_MEMORY_BYTES,
        directory: str | None = None,
    ) -> None:
        self._budget = budget
        self._memory_bytes = memory_bytes
        self._directory = directory
        self._memory: list[bytes] = []
        self._fd: int | None = None
        self._charged = 0
        self.size = 0

    @property
    def on_disk(self) -> bool:
        """Whether the body went to a file (it passed ``memory_bytes``)."""
        return self._fd is not None

    async def write(self, data: bytes) -> None:
        """Appends ``data`` (SpoolFullError when the node's disk budget would pass)."""
        if not data:
            return
        if self._fd is None and self.size + len(data) <= self._memory_bytes:
            self._memory.append(data)
            self.size += len(data)
            return
        added = len(data)
        if self._fd is None:
            data = b"".join(self._memory) + data  # the whole body moves to the file
        if self._budget is not None:
            self._budget.take(len(data))
            self._charged += len(data)
        if self._fd is None:
            self._fd = await asyncio.to_thread(self._open)
            self._memory = []
        await asyncio.to_thread(_write_all, self._fd, data)
        self.size += added

    def _open(self) -> int:
        handle, path = tempfile.mkstemp(prefix="cgn-body-", dir=self._directory)
        os.unlink(path)
        return handle

    def contents(self) -> bytes:
        """The whole body, for one still in memory."""
        if self._fd is not None:
            raise ValueError("the body is on disk: read it with slices()")
        return b"".join(self._memory)

    async def slices(self, size: int = BODY_CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The body from its start, ``size`` bytes at a time."""
        if self._fd is None:
            body = b"".join(self._memory)
            view = memoryview(body)
            for at in range(0, len(body), size):
                yield bytes(view[at : at + size])
            return
        fd = self._fd
        for at in range(0, self.size, size):
            yield await asyncio.to_thread(os.pread, fd, min(size, self.size - at), at)

    def close(self) -> None:
        """Frees the body (its file, and its share of the budget)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._memory = []
        if self._budget is not None:
            self._budget.give(self._charged)
            self._charged = 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
