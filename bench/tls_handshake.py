"""Benchmark what TLS costs a gRPC link: connection set-up and per-call latency for plaintext,
server-authenticated TLS (miners, gRPC clients) and mutual TLS (the CGN's own processes).

Usage (from the repository root)::

    .venv/bin/python bench/tls_handshake.py [--connects 200] [--calls 2000]

One process, one event loop: a CGN ``GrpcServer`` (health service, the same interceptors,
credentials and certificates as production: ECDSA P-256 from ``cgn_common.certs``) on
127.0.0.1, and a client that, per mode, (1) opens a new channel, makes one Health.Check and
closes it, ``--connects`` times in a row, and (2) makes ``--calls`` sequential Health.Check
calls on one established channel. Both sides share the loop and the 2 cores, so the figures
are the whole cost of a connection or a call on this machine (client + server), not a
server's throughput. The plaintext row is the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cgn_common.certs import Authority, Identity, Role, write_issued
from cgn_common.rpc import GrpcServer, open_channel
from cgn_common.tls import ClientAuth, TlsConfig

REQUEST = health_pb2.HealthCheckRequest()


async def _connect_once(address: str, tls: TlsConfig) -> float:
    started = time.perf_counter()
    async with open_channel(address, tls) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(REQUEST, timeout=10)
    return time.perf_counter() - started


async def _measure(
    address: str, server_tls: TlsConfig, client_tls: TlsConfig, connects: int, calls: int
) -> tuple[float, float, float, float]:
    connect_s = [await _connect_once(address, client_tls) for _ in range(connects)]
    async with open_channel(address, client_tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(50):  # warm-up
            await stub.Check(REQUEST, timeout=10)
        call_s = []
        for _ in range(calls):
            started = time.perf_counter()
            await stub.Check(REQUEST, timeout=10)
            call_s.append(time.perf_counter() - started)
    q = statistics.quantiles
    return (
        statistics.median(connect_s) * 1000,
        q(connect_s, n=100)[98] * 1000,
        statistics.median(call_s) * 1e6,
        q(call_s, n=100)[98] * 1e6,
    )


async def main(connects: int, calls: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="cgn-tls-bench-"))
    authority = Authority.create()
    authority.save(directory / "ca.pem", directory / "ca.key")
    ca = str(directory / "ca.pem")

    def issued(role: Role, name: str) -> TlsConfig:
        files = write_issued(authority, Identity(role, name), directory)
        return TlsConfig(str(files.cert_file), str(files.key_file), ca)

    node, gateway = issued(Role.NODE, "bench-node"), issued(Role.GATEWAY, "bench-gateway")
    modes = [
        ("plaintext (dev flag)", TlsConfig(insecure_plaintext=True), ClientAuth.NONE, None),
        ("server TLS (miner, gRPC client)", node, ClientAuth.NONE, TlsConfig(ca_file=ca)),
        ("mutual TLS (CGN processes)", node, ClientAuth.REQUIRED, gateway),
    ]
    rows = []
    for name, server_tls, auth, client_tls in modes:
        server = GrpcServer(f"bench-{auth.value}", server_tls, auth, {})
        address = await server.start("127.0.0.1:0")
        try:
            rows.append(
                (
                    name,
                    *await _measure(address, server_tls, client_tls or server_tls, connects, calls),
                )
            )
        finally:
            await server.stop(0)
    base_connect, base_call = rows[0][1], rows[0][3]
    print(f"\nTLS cost on this machine: {connects} connections, {calls} calls per mode\n")
    print(
        f"{'mode':34} {'connect p50':>12} {'p99':>9} {'x plain':>8}"
        f" {'call p50':>10} {'p99':>9} {'x plain':>8}"
    )
    for name, c50, c99, k50, k99 in rows:
        print(
            f"{name:34} {c50:>9.2f} ms {c99:>6.2f} ms {c50 / base_connect:>7.2f}x"
            f" {k50:>7.0f} us {k99:>6.0f} us {k50 / base_call:>7.2f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.connects, args.calls))
