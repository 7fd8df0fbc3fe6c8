"""A test's own raw HTTP/1.1 client (h11 over asyncio streams): the request goes out exactly
as given, and the answer comes back with its header names, order, duplicates and value bytes
as the server sent them, its body undecoded. One connection per request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import h11

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Answer:
    """A raw HTTP answer."""

    status: int
    headers: Headers
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive), in order."""
        return [v for n, v in self.headers if n.lower() == name.lower()]


async def exchange(
    host: str,
    port: int,
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes = b"",
    timeout_s: float = 20.0,
    *,
    send_body: bool = True,
) -> Answer:
    """Sends one request to ``host:port`` and reads the whole answer (bounded);
    ``send_body=False`` sends the head alone (whatever it announces) and waits."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=256 * 1024)
            data = conn.send(h11.Request(method=method, target=target, headers=list(headers)))
            if body:
                data += conn.send(h11.Data(data=body))
            if send_body:
                data += conn.send(h11.EndOfMessage())
            writer.write(data)
            await writer.drain()
            status = 0
            out: Headers = []
            chunks: list[bytes] = []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status, out = event.status_code, list(event.headers.raw_items())
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return Answer(status, out, b"".join(chunks))
        finally:
            writer.close()
