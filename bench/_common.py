"""Helpers shared by the benchmarks: the raw HTTP/1.1 client's chunked reader and /proc CPU."""

from __future__ import annotations

import asyncio
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """Read a chunked-encoded body (small responses only)."""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def cpu_seconds(stat_fields: list[str]) -> float:
    """User + system CPU seconds from /proc/<pid>/stat fields after the command name."""
    return (int(stat_fields[11]) + int(stat_fields[12])) / CLK_TCK
