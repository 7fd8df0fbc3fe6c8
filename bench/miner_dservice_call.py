"""Benchmark the miner's CPU per call to a DService: ``DServiceProcess.stream`` (the HTTP/1.1
client and the per-request metering) against a bare keep-alive client on the same echo.

Usage (from the repository root)::

    .venv/bin/python bench/miner_dservice_call.py [--calls 3000] [--rounds 3] [--src DIR] [--pin]

It starts the echo DService through ``ProcessRuntime``, as the miner does, then, ``--rounds``
times, alternating the two clients within each round:

* ``bare``: a keep-alive client on one connection per concurrent caller, asyncio streams and
  httptools, no metering: about the least a Python process can spend on one round trip;
* ``stream``: ``DServiceProcess.stream``, the body read to its end, as the miner's link does.

Workloads: an empty GET, sequential (one connection: every call starts a busy period, the
metering's most expensive case); a POST of 1 KiB with the headers the node sends, sequential;
and 16 callers at once, each making its calls one after another (empty GETs).

Printed per workload and client: the CPU of this process per call (``time.process_time``:
the client side only, the echo runs in its own process), the wall p50 of a sequential call,
and the ratio of ``stream`` to ``bare`` (medians over the rounds). The machine is shared, so
compare ratios within a run, and alternate runs of the code before and after a change:
``--src`` imports ``miner`` and ``cgn_common`` from another checkout (e.g. an export of
``main``) instead of this one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httptools

_SRC = Path(__file__).resolve().parents[1]
if "--src" in sys.argv:
    _SRC = Path(sys.argv[sys.argv.index("--src") + 1]).resolve()
sys.path.insert(0, str(_SRC))

from miner.runtime import DServiceProcess, ProcessRuntime  # noqa: E402

CONCURRENCY = 16
_BODY = b"x" * 1024
#: What the node's work unit typically carries to a DService (besides the body).
_HEADERS = [
    ("Content-Type", b"application/octet-stream"),
    ("X-Request-Id", b"0f8e1c2a-5b7d-4e4b-9c1d-3a2b1c0d9e8f"),
    ("X-CGN-Attempt", b"1"),
]


class BareClient:
    """One keep-alive connection, requests written as bytes, answers parsed by httptools."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._done = False
        self._body: list[bytes] = []
        self._parser = httptools.HttpResponseParser(self)

    @classmethod
    async def connect(cls, echo: DServiceProcess) -> BareClient:
        listen = echo.listen
        if listen.socket:
            reader, writer = await asyncio.open_unix_connection(listen.socket)
        else:
            reader, writer = await asyncio.open_connection(listen.host, listen.port)
        return cls(reader, writer)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._done = True

    async def call(self, head: bytes, body: bytes) -> bytes:
        self._done = False
        self._body = []
        self._writer.write(head + body)
        while not self._done:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionResetError
            self._parser.feed_data(data)
        return b"".join(self._body)

    def close(self) -> None:
        self._writer.close()


def _head(
    echo: DServiceProcess, method: str, body: bytes, headers: list[tuple[str, bytes]]
) -> bytes:
    lines = [f"{method} / HTTP/1.1".encode(), b"Host: " + echo.listen.authority.encode()]
    lines += [n.encode() + b": " + v for n, v in headers]
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _via_stream(
    echo: DServiceProcess, method: str, body: bytes, headers: list[tuple[str, bytes]]
) -> None:
    async with echo.stream(method, "/", "", headers, body) as answer:
        async for _ in answer.body:
            pass


Call = Callable[[], Awaitable[object]]


async def _measure(
    calls: int, concurrency: int, make: Callable[[], Awaitable[Call]]
) -> tuple[float, float]:
    """CPU µs per call and wall p50 µs (of each call, as its caller saw it)."""
    callers = [await make() for _ in range(concurrency)]
    for call in callers:  # warm: connections open, caches filled
        for _ in range(max(1, 200 // concurrency)):
            await call()
    walls: list[float] = []

    async def run(call: Call, n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            await call()
            walls.append(time.perf_counter() - started)

    per = calls // concurrency
    cpu = time.process_time()
    await asyncio.gather(*(run(call, per) for call in callers))
    cpu = time.process_time() - cpu
    return cpu / (per * concurrency) * 1e6, statistics.median(walls) * 1e6


async def bench(calls: int, rounds: int, pin: bool) -> None:
    runtime = ProcessRuntime(["echo"])
    await runtime.start()
    bare_clients: list[BareClient] = []
    try:
        echo = runtime.get("echo")
        if pin:  # the client on the first CPU, the echo on the last: the same placement each run
            assert echo.pid is not None
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpus[0]})
            os.sched_setaffinity(echo.pid, {cpus[-1]})
        workloads: list[tuple[str, str, bytes, list[tuple[str, bytes]], int]] = [
            ("GET empty, sequential", "GET", b"", [], 1),
            ("POST 1 KiB + 3 headers, sequential", "POST", _BODY, _HEADERS, 1),
            (f"GET empty, {CONCURRENCY} at once", "GET", b"", [], CONCURRENCY),
        ]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(rounds):
            for name, method, body, headers, concurrency in workloads:
                head = _head(echo, method, body, headers)

                async def bare(head: bytes = head, body: bytes = body) -> Call:
                    client = await BareClient.connect(echo)
                    bare_clients.append(client)
                    return lambda: client.call(head, body)

                async def stream(
                    method: str = method,
                    body: bytes = body,
                    headers: list[tuple[str, bytes]] = headers,
                ) -> Call:
                    return lambda: _via_stream(echo, method, body, headers)

                for client, make in (("bare", bare), ("stream", stream)):
                    results.setdefault((name, client), []).append(
                        await _measure(calls, concurrency, make)
                    )
                for bare_client in bare_clients:
                    bare_client.close()
                bare_clients.clear()
        print(f"source: {_SRC}; {calls} calls x {rounds} rounds; medians over rounds")
        columns = ("CPU µs/call", "wall p50 µs", "CPU ratio")
        print(f"{'workload':<36} {'client':<7} {columns[0]:>11} {columns[1]:>11} {columns[2]:>9}")
        for name, *_ in workloads:
            base = statistics.median(cpu for cpu, _ in results[(name, "bare")])
            for client in ("bare", "stream"):
                cpu = statistics.median(c for c, _ in results[(name, client)])
                wall = statistics.median(w for _, w in results[(name, client)])
                print(f"{name:<36} {client:<7} {cpu:11.1f} {wall:11.1f} {cpu / base:9.2f}")
    finally:
        for bare_client in bare_clients:
            bare_client.close()
        await runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--src", help="import miner and cgn_common from this checkout")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin this process and the echo to two CPUs: where the scheduler puts them moves "
        "the CPU per call by up to 1.7x between runs",
    )
    args = parser.parse_args()
    asyncio.run(bench(args.calls, args.rounds, args.pin))


if __name__ == "__main__":
    main()
