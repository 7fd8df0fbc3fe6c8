"""Benchmark what certificate revocation adds to each call a mutual-TLS server takes.

Usage (from the repository root)::

    .venv/bin/python bench/revocation_check.py [--revoked 10000] [--loops 100000] [--calls 2000]

One process, one event loop, a CGN ``GrpcServer`` on 127.0.0.1 with mutual TLS and a client
certificate of the same CA. Two measurements:

1. In place, inside a real call: the server's handler times, ``--loops`` times each, what the
   authorization interceptor reads per call: the call's ``auth_context()`` and the peer's
   identity (as before revocation existed), then the same plus the revocation check
   (``peer_certificate`` and ``RevocationList.revoked_serial``, with its real clock and its stat
   of the files once a second), against an empty CRL and one listing ``--revoked`` other
   serials. The difference is what revocation costs a call: each call's auth context holds a
   fresh copy of the PEM, so the cache lookup hashes it every time, as here.
2. End to end: ``--calls`` sequential unary calls on one channel, without a CRL and with the
   large one; p50 and p99 of the whole call (client + server on the same 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cgn_common.certs import Authority, Identity, Role, write_issued
from cgn_common.interceptors import Rule
from cgn_common.rpc import GrpcServer, open_channel
from cgn_common.tls import (
    ClientAuth,
    RevocationList,
    TlsConfig,
    peer_certificate,
    peer_identity,
)

METHOD = "/bench.Revocation/Measure"


def _per_loop_us(fn: Callable[[], object], loops: int) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - started) / loops * 1e6


def _measure_handler(lists: dict[str, RevocationList], loops: int) -> Any:
    async def measure(request: bytes, context: Any) -> bytes:
        cert = peer_certificate(context.auth_context())
        assert cert is not None

        def before() -> object:
            return peer_identity(context.auth_context())

        results = {
            "auth_context()": _per_loop_us(context.auth_context, loops),
            "auth_context() + peer_identity": _per_loop_us(before, loops),
        }
        for name, revocations in lists.items():
            revocations.revoked_serial(cert)  # the first sight parses the certificate

            def after(check: Callable[[bytes], int | None] = revocations.revoked_serial) -> object:
                auth = context.auth_context()
                cert = peer_certificate(auth)
                assert cert is not None
                return check(cert), peer_identity(auth)

            results[f"  ... + revocation check, {name}"] = _per_loop_us(after, loops)
        return json.dumps(results).encode()

    return grpc.unary_unary_rpc_method_handler(measure)


async def _call_latencies(address: str, tls: TlsConfig, calls: int) -> tuple[float, float]:
    async with open_channel(address, tls) as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check")
        for _ in range(50):  # warm-up
            await call(b"", timeout=10)
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            await call(b"", timeout=10)
            latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1e6, statistics.quantiles(latencies, n=100)[98] * 1e6


async def main(revoked: int, loops: int, calls: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="cgn-crl-bench-"))
    authority = Authority.create()
    authority.save(directory / "ca.pem", directory / "ca.key")

    def issued(role: Role, name: str) -> TlsConfig:
        files = write_issued(authority, Identity(role, name), directory)
        return TlsConfig(str(files.cert_file), str(files.key_file), str(directory / "ca.pem"))

    node, gateway = issued(Role.NODE, "bench-node"), issued(Role.GATEWAY, "bench-gateway")
    authority.update_crl(directory / "empty.pem")
    authority.update_crl(directory / "large.pem", range(1, revoked + 1))
    empty = dataclasses.replace(node, crl_file=str(directory / "empty.pem"))
    large = dataclasses.replace(node, crl_file=str(directory / "large.pem"))
    lists = {
        "empty CRL": RevocationList(empty, "bench-empty"),
        f"{revoked:,} revoked": RevocationList(large, "bench-large"),
    }

    server = GrpcServer("bench", large, ClientAuth.REQUIRED, {METHOD: Rule.peer(Role.GATEWAY)})
    server.add_handlers(
        grpc.method_handlers_generic_handler(
            "bench.Revocation", {"Measure": _measure_handler(lists, loops)}
        )
    )
    address = await server.start("127.0.0.1:0")
    try:
        async with open_channel(address, gateway) as channel:
            measured = json.loads(await channel.unary_unary(METHOD)(b"", timeout=60))
    finally:
        await server.stop(0)

    rows = []
    for name, tls in (("no CRL", node), (f"CRL, {revoked:,} revoked", large)):
        server = GrpcServer(f"bench-{name}", tls, ClientAuth.REQUIRED, {})
        address = await server.start("127.0.0.1:0")
        try:
            rows.append((name, *await _call_latencies(address, gateway, calls)))
        finally:
            await server.stop(0)

    print(f"\nPer call, inside a real mutual-TLS call ({loops:,} loops each):\n")
    for name, us in measured.items():
        print(f"  {name:40} {us:>7.2f} us")
    print(f"\nWhole unary call, {calls:,} sequential calls on one channel:\n")
    print(f"  {'server':40} {'p50':>10} {'p99':>10}")
    for name, p50, p99 in rows:
        print(f"  {name:40} {p50:>7.0f} us {p99:>7.0f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revoked", type=int, default=10_000)
    parser.add_argument("--loops", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.revoked, args.loops, args.calls))
