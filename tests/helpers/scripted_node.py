"""The miner's real link session (``LinkSession``) against a scripted node: a gRPC
MinerLinkService servicer of the test's, served in process on loopback without TLS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from cgn_common.config import Secret
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc
from miner._link import LinkSession
from miner.config import MinerConfig
from miner.fitness import FitnessResult
from miner.runtime import ProcessRuntime


@contextlib.asynccontextmanager
async def miner_linked_to(
    node: pb_grpc.MinerLinkServiceServicer, runtime: ProcessRuntime, slots: int
) -> AsyncIterator[int]:
    """Serves ``node`` and runs a miner session with ``runtime`` and ``slots`` work units at
    once against it until the block ends; yields the node's port."""
    server = grpc.aio.server()
    pb_grpc.add_MinerLinkServiceServicer_to_server(node, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = MinerConfig(miner_id="m1", miner_key=Secret("k"), max_concurrent_work_units=slots)
    session = LinkSession(config, runtime, FitnessResult(1, 1, 1, 1))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    running = asyncio.create_task(session.run(channel, asyncio.Event()))
    try:
        yield port
    finally:
        running.cancel()
        await asyncio.wait({running})
        await channel.close()
        await server.stop(None)
