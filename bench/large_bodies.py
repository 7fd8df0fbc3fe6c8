"""Benchmark large bodies: throughput (MiB/s) and peak RSS of each CGN process for a large
download, through a sandbox next to the same transfer straight from the DService, in one run.

Usage (from the repository root)::

    .venv/bin/python bench/large_bodies.py [--mib 1024]

The echo DService answers ``X-Echo-Generate-Bytes: N`` with N bytes, chunked, as it
produces them. ``direct`` reads them from the echo process over HTTP/1.1; ``through CGN``
reads them through a complete sandbox (``python -m cgn_cli sandbox``) with
``WorkService.CallStream`` straight to the node's work port, as an internal service does:
echo -> miner (h11, a slice at a time) -> data plane -> node (a few-slice relay) -> caller.
Every body is checked against the pattern (its SHA-256). Peak RSS is each process's
``VmHWM`` read from ``/proc`` after the transfer, reset just before it (``clear_refs``).

What is not measured yet, and why: the 1 GiB *upload* and the gateway's leg. Today the
gateway reads a request body whole, up to ``max_work_body_bytes`` (32 MiB), and sends it in one
unary call; streaming request bodies and the gateway on ``CallStream`` are the rest of the
data-plane issue, and this script grows a row for each when they land.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cgn_common.rpc import open_channel
from dservices.echo import _PATTERN
from generated.cgn.common.v1 import http_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers.sandbox import (
    RunningSandbox,
    peak_rss_mib,
    reset_peak_rss,
    start_sandbox,
    stop_sandbox,
)

MIB = 1024 * 1024


def _expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    left = size
    while left:
        piece = _PATTERN[: min(left, len(_PATTERN))]
        digest.update(piece)
        left -= len(piece)
    return digest.hexdigest()


async def _direct(size: int) -> tuple[float, str]:
    """Seconds and SHA-256 of a download straight from a fresh echo process."""
    port = _free_port()
    env = {**os.environ, "CGN_LISTEN": f"127.0.0.1:{port}"}
    echo = await asyncio.create_subprocess_exec(sys.executable, "-m", "dservices.echo", env=env)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 10
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/ready") as ready:
                        await ready.read()
                    break
                except aiohttp.ClientConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            digest = hashlib.sha256()
            began = time.monotonic()
            async with http.get(
                f"http://127.0.0.1:{port}/large", headers={"X-Echo-Generate-Bytes": str(size)}
            ) as answer:
                async for chunk in answer.content.iter_chunked(256 * 1024):
                    digest.update(chunk)
            return time.monotonic() - began, digest.hexdigest()
    finally:
        echo.terminate()
        await asyncio.wait_for(echo.wait(), 10)


def _free_port() -> int:
    """A free loopback port (bound, then released for the child to take)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _through_cgn(sb: RunningSandbox, size: int) -> tuple[float, str]:
    """Seconds and SHA-256 of the same download through the sandbox's node (CallStream)."""
    token = await sb.session_token()
    head = http_pb2.HttpRequestHead(
        method="GET",
        path="/large",
        headers=[http_pb2.HttpHeader(name="X-Echo-Generate-Bytes", value=str(size).encode())],
    )

    async def requests() -> AsyncIterator[work_pb.CallStreamRequest]:
        yield work_pb.CallStreamRequest(start=work_pb.CallStart(dservice="echo", head=head))

    digest = hashlib.sha256()
    address = sb.info["processes"]["node"]["endpoints"]["work"]
    async with open_channel(address, sb.tls()) as channel:
        began = time.monotonic()
        call = work_grpc.WorkServiceStub(channel).CallStream(
            requests(), metadata=(("authorization", f"Bearer {token}"),), timeout=600
        )
        async for message in call:
            if message.WhichOneof("kind") == "body":
                digest.update(message.body.data)
        return time.monotonic() - began, digest.hexdigest()


def _cgn_processes(sb: RunningSandbox) -> dict[str, int]:
    """The CGN's processes (gateway, node, miners: not the DService, not Central)."""
    found: dict[str, int] = {}
    for name, process in sb.info["processes"].items():
        if name in ("gateway", "node") or name.startswith("miner"):
            found[name] = int(process["pid"])
    return found


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="download size, MiB")
    args = parser.parse_args()
    size = args.mib * MIB
    expected = _expected_digest(size)
    direct_s, direct_digest = await _direct(size)
    with tempfile.TemporaryDirectory(prefix="cgn-large-") as tmp:
        sb = start_sandbox(Path(tmp) / "state", Path(tmp) / "sandbox.log", miners=1)
        try:
            for pid in _cgn_processes(sb).values():  # the peaks below are this transfer's
                reset_peak_rss(pid)
            cgn_s, cgn_digest = await _through_cgn(sb, size)
            rss = {name: peak_rss_mib(pid) for name, pid in _cgn_processes(sb).items()}
        finally:
            stop_sandbox(sb.process)
    ok = "ok" if direct_digest == cgn_digest == expected else "MISMATCH"
    print(f"{args.mib:,} MiB download, SHA-256 {ok}")
    print("| path | seconds | MiB/s | peak RSS (MiB) |")
    print("| --- | ---: | ---: | --- |")
    print(f"| direct (echo over HTTP/1.1) | {direct_s:.2f} | {args.mib / direct_s:,.0f} | - |")
    peaks = ", ".join(f"{name} {mib:,.0f}" for name, mib in sorted(rss.items()))
    print(
        f"| through CGN (CallStream via the node) | {cgn_s:.2f} | {args.mib / cgn_s:,.0f} "
        f"| {peaks} |"
    )
    print(f"ratio through CGN / direct, seconds: {cgn_s / direct_s:.2f}")
    print(json.dumps({"direct_s": direct_s, "cgn_s": cgn_s, "peak_rss_mib": rss}))
    return 0 if ok == "ok" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
