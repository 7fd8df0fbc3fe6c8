"""Benchmark large bodies: throughput (MiB/s) and peak RSS of each CGN process for a large
upload and a large download through a sandbox, next to the same transfers straight to the
DService, in one run; and how soon the first line of a dripping answer arrives.

Usage (from the repository root)::

    .venv/bin/python bench/large_bodies.py [--mib 1024]

The HTTP transfers are made by ``curl`` (a native client: a Python one would compete with
the CGN for the same 2 cores), its output piped into ``sha256sum``:

- download: the echo DService answers ``X-Echo-Generate-Bytes: N`` with N bytes, chunked, as
  it produces them; ``direct`` reads them from the echo process over HTTP/1.1, ``gateway``
  through the sandbox's REST gateway (gateway -> node -> miner -> echo, each a slice at a
  time); ``CallStream`` reads them with ``WorkService.CallStream`` straight from the node's
  work port, as an internal service does (a Python gRPC client: no native one here).
- upload: a file of random bytes POSTed with ``X-Echo-Digest: sha256`` (the echo reads the
  whole body, then answers its SHA-256): ``direct``, and through the gateway (which streams
  it to the node, which spools it and hands it to the miner, which streams it to the echo).
- drip: ``X-Echo-Drip: 15x200`` (a line every 200 ms): seconds to the first line.

Every body is checked by SHA-256. Peak RSS is each process's ``VmHWM`` read from ``/proc``
after each transfer, reset just before it (``clear_refs``). One miner, so one process.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import HOST, Child, free_port, spawn, stop_child, wait_listening

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
T = TypeVar("T")


def _expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    left = size
    while left:
        piece = _PATTERN[: min(left, len(_PATTERN))]
        digest.update(piece)
        left -= len(piece)
    return digest.hexdigest()


async def _echo(output: Path) -> tuple[Child, int]:
    """A fresh echo process on a free loopback port, once it listens."""
    port = free_port()
    echo = await spawn("echo", ["-m", "dservices.echo"], {"CGN_LISTEN": f"{HOST}:{port}"}, output)
    await wait_listening(echo, port)
    return echo, port


async def _curl(*args: str) -> tuple[float, str]:
    """Seconds of one curl transfer and the SHA-256 of what it wrote to stdout."""
    began = time.monotonic()
    shell = " ".join(shlex.quote(a) for a in ("curl", "--silent", "--fail", *args))
    process = await asyncio.create_subprocess_shell(
        f"set -o pipefail; {shell} | sha256sum",
        stdout=asyncio.subprocess.PIPE,
        executable="/bin/bash",
    )
    out, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"curl failed ({process.returncode}): {shell}")
    return time.monotonic() - began, out.decode().split()[0]


async def _curl_json(*args: str) -> tuple[float, dict[str, object]]:
    """Seconds of one curl transfer and the JSON it answered."""
    began = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--fail", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"curl failed ({process.returncode})")
    answer: dict[str, object] = json.loads(out)
    return time.monotonic() - began, answer


async def _first_line(url: str, headers: dict[str, str]) -> float:
    """Seconds until the first line of a dripping answer."""
    async with aiohttp.ClientSession() as http:
        began = time.monotonic()
        async with http.get(url, headers=headers) as answer:
            await answer.content.readline()
            seconds = time.monotonic() - began
            await answer.read()
    return seconds


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


def _write_random(path: Path, mib: int) -> str:
    """Writes ``mib`` MiB of random bytes to ``path``; returns their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(mib):
            piece = os.urandom(MIB)
            digest.update(piece)
            out.write(piece)
    return digest.hexdigest()


async def _measured(sb: RunningSandbox, transfer: Awaitable[T]) -> tuple[T, dict[str, float]]:
    """``transfer``'s result and the peak RSS (MiB) of each CGN process during it."""
    processes = sb.cgn_processes()
    for pid in processes.values():
        reset_peak_rss(pid)
    result = await transfer
    return result, {name: peak_rss_mib(pid) for name, pid in processes.items()}


def _row(path: str, mib: int, seconds: float, rss: dict[str, float] | None, ok: bool) -> str:
    peaks = ", ".join(f"{n} {m:,.0f}" for n, m in sorted(rss.items())) if rss else "-"
    check = "ok" if ok else "MISMATCH"
    return f"| {path} | {seconds:.2f} | {mib / seconds:,.0f} | {peaks} | {check} |"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="transfer size, MiB")
    args = parser.parse_args()
    mib = args.mib
    size = mib * MIB
    expected = _expected_digest(size)
    generate = ["-H", f"X-Echo-Generate-Bytes: {size}"]
    digest = ["-H", "X-Echo-Digest: sha256", "-H", "Content-Type: application/octet-stream"]
    drip = {"X-Echo-Drip": "15x200"}
    rows: list[str] = []
    results: dict[str, object] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="cgn-large-") as tmp:
        upload = Path(tmp) / "upload"
        sent = await asyncio.to_thread(_write_random, upload, args.mib)
        post = ["--upload-file", str(upload), "--request", "POST", *digest]

        echo, port = await _echo(Path(tmp) / "echo.log")
        try:
            base = f"http://{HOST}:{port}/large"
            direct_down, got = await _curl(*generate, base)
            rows.append(
                _row("download, direct (echo)", args.mib, direct_down, None, got == expected)
            )
            direct_up, answer = await _curl_json(*post, base)
            ok = answer.get("sha256") == sent
            rows.append(_row("upload, direct (echo)", args.mib, direct_up, None, ok))
            direct_drip = await _first_line(base, drip)
        finally:
            await stop_child(echo, 10)

        sb = start_sandbox(Path(tmp) / "state", Path(tmp) / "sandbox.log", miners=1)
        try:
            token = await sb.session_token()
            auth = ["-H", f"Authorization: Bearer {token}"]
            url = f"{sb.url}/v1/dservices/echo/large"
            (gw_down, got), rss = await _measured(sb, _curl(*auth, *generate, url))
            failed |= got != expected
            rows.append(
                _row("download, through the gateway", args.mib, gw_down, rss, got == expected)
            )
            results["gateway_download"] = {"s": gw_down, "peak_rss_mib": rss}
            (stream_down, got), rss = await _measured(sb, _through_cgn(sb, size))
            failed |= got != expected
            rows.append(
                _row(
                    "download, CallStream to the node", args.mib, stream_down, rss, got == expected
                )
            )
            results["callstream_download"] = {"s": stream_down, "peak_rss_mib": rss}
            (gw_up, answer), rss = await _measured(sb, _curl_json(*auth, *post, url))
            ok = answer.get("sha256") == sent
            failed |= not ok
            rows.append(_row("upload, through the gateway", args.mib, gw_up, rss, ok))
            results["gateway_upload"] = {"s": gw_up, "peak_rss_mib": rss}
            gw_drip = await _first_line(url, {**drip, "Authorization": f"Bearer {token}"})
        finally:
            stop_sandbox(sb.process)
    print(f"{args.mib:,} MiB each way (curl | sha256sum; the CallStream row: a Python client)")
    print("| path | seconds | MiB/s | peak RSS per CGN process (MiB) | SHA-256 |")
    print("| --- | ---: | ---: | --- | --- |")
    print("\n".join(rows))
    print(
        f"ratios through the gateway / direct, seconds: download {gw_down / direct_down:.2f}, "
        f"upload {gw_up / direct_up:.2f}"
    )
    print(
        f"drip (a line every 200 ms), first line after: direct {direct_drip:.3f} s, "
        f"through the gateway {gw_drip:.3f} s"
    )
    results.update(direct_download_s=direct_down, direct_upload_s=direct_up)
    results.update(direct_first_line_s=direct_drip, gateway_first_line_s=gw_drip)
    print(json.dumps(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
