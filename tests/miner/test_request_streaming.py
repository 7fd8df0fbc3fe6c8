"""A request body too large to travel inline streams from the dispatch's data plane into the
DService a slice at a time: the miner's real link session (``LinkSession``) against a
scripted node (a gRPC MinerLinkService in process that assigns one unit and sends its body),
and a real DService process that hashes what it reads."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cgn_common.descriptor import parse_descriptor
from cgn_common.streams import BODY_CHUNK_BYTES
from generated.cgn.common.v1 import http_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc
from miner.runtime import ProcessRuntime
from tests.helpers.scripted_node import miner_linked_to

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "d_streamed"
#: More than the old 64 MiB cap of a buffered body, not a whole number of slices.
LARGE = 64 * 1024 * 1024 + 17


def _slice(n: int, size: int) -> bytes:
    """Slice ``n`` of a body: a pattern that differs per slice, so order and loss show."""
    return (hashlib.sha256(n.to_bytes(4, "big")).digest() * (BODY_CHUNK_BYTES // 32))[:size]


class ScriptedNode(pb_grpc.MinerLinkServiceServicer):
    """Welcomes the miner, assigns one unit whose ``size``-byte body goes on the data plane,
    and sends that body when the miner opens it: all of it, or only ``cut_after`` slices
    before ending the data plane. What the miner sends comes out in ``control`` and
    ``exchanged``."""

    def __init__(self, size: int, cut_after: int | None = None) -> None:
        self.size = size
        self.cut_after = cut_after
        self.headers: list[tuple[str, bytes]] = []
        self.sha256 = hashlib.sha256()
        self.control: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()
        self.exchanged: asyncio.Queue[pb.ExchangeRequest] = asyncio.Queue()
        self.body_sent = asyncio.Event()

    async def Connect(  # type: ignore[override]  # noqa: N802
        self, request_iterator: Any, context: Any
    ) -> None:
        await context.read()  # the hello
        await context.write(pb.ConnectResponse(nonce="n0", welcome=pb.Welcome(node_id="scripted")))
        assignment = pb.WorkAssignment(
            work_id="w1",
            dispatch_token=TOKEN,
            request_id="r1",
            dservice="sha256",
            head=http_pb2.HttpRequestHead(
                method="POST",
                path="/digest",
                headers=[http_pb2.HttpHeader(name=n, value=v) for n, v in self.headers],
            ),
            body_complete=False,
            body_size=self.size,
        )
        assignment.timeout.FromSeconds(120)  # far beyond the tests' own deadlines
        assignment.lease.FromSeconds(30)
        await context.write(pb.ConnectResponse(nonce="n1", assignment=assignment))
        while (message := await context.read()) is not grpc.aio.EOF:
            self.control.put_nowait(message)

    async def Exchange(  # type: ignore[override]  # noqa: N802
        self, request_iterator: Any, context: Any
    ) -> None:
        opened = await context.read()
        assert opened.open.dispatch_token == TOKEN
        sender = asyncio.create_task(self._send_body(context))
        try:
            if self.cut_after is not None:
                await sender
                return  # the data plane ends before the body did
            while (message := await context.read()) is not grpc.aio.EOF:
                self.exchanged.put_nowait(message)
            await sender
        finally:
            sender.cancel()

    async def _send_body(self, context: Any) -> None:
        sent = 0
        n = 0
        while sent < self.size and (self.cut_after is None or n < self.cut_after):
            data = _slice(n, min(BODY_CHUNK_BYTES, self.size - sent))
            self.sha256.update(data)
            sent += len(data)
            n += 1
            chunk = pb.RequestBodyChunk(
                dispatch_token=TOKEN, data=data, end_of_body=sent == self.size
            )
            await context.write(pb.ExchangeResponse(request_body=chunk))
        self.body_sent.set()


class Miner:
    """The miner's link session on a channel to ``node``, with the sha256 DService."""

    def __init__(self, node: ScriptedNode, runtime: ProcessRuntime, port: int) -> None:
        self.node = node
        self.runtime = runtime
        self.port = port

    async def control(self, kind: str) -> pb.ConnectRequest:
        """The next control-stream message of ``kind`` from the miner."""
        while (message := await self.node.control.get()).WhichOneof("kind") != kind:
            pass
        return message

    async def exchanged(self) -> list[pb.ExchangeRequest]:
        """What the miner sent on the data plane, up to its completion."""
        got = [await self.node.exchanged.get()]
        while got[-1].WhichOneof("kind") != "completion":
            got.append(await self.node.exchanged.get())
        return got


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    descriptor = f"""
name = "sha256"
version = "1.0.0"
[process]
listen = "unix"
command = [{json.dumps(sys.executable)}, "-m", "tests.miner.sha256_dservice"]
env = {{ PYTHONPATH = {json.dumps(str(ROOT))} }}
"""
    loaded = parse_descriptor(descriptor, "test", ROOT)
    runtime = ProcessRuntime(descriptors=[loaded], state_dir=tmp_path / "state")
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


@contextlib.asynccontextmanager
async def _running(node: ScriptedNode, runtime: ProcessRuntime) -> AsyncIterator[Miner]:
    async with miner_linked_to(node, runtime, slots=2) as port:
        yield Miner(node, runtime, port)


async def test_a_large_body_streams_into_the_dservice_in_bounded_memory(
    runtime: ProcessRuntime,
) -> None:
    node = ScriptedNode(LARGE)
    tracemalloc.start()
    try:
        async with asyncio.timeout(120):
            async with _running(node, runtime) as miner:
                exchanged = await miner.exchanged()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kinds = [m.WhichOneof("kind") for m in exchanged]
    assert kinds[0] == "response", kinds
    assert kinds[-1] == "completion", kinds
    assert exchanged[0].response.head.status_code == 200
    answer = json.loads(b"".join(m.response_body.data for m in exchanged[1:-1]))
    assert answer == {"sha256": node.sha256.hexdigest(), "size": LARGE}
    assert exchanged[-1].completion.usage.bytes_in == LARGE
    # Buffered, the body alone would be 64 MiB of Python bytes in this process (the miner's
    # and the scripted node's memory both count here); streamed, a few slices at a time.
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


async def test_a_data_plane_that_ends_before_the_body_fails_the_unit_at_once(
    runtime: ProcessRuntime,
) -> None:
    """The DService waits for the rest of the body and would never answer: the miner must
    not wait for its answer (the unit's own timeout is 120 s), but fail the unit as soon as
    the data plane ends."""
    node = ScriptedNode(LARGE, cut_after=8)
    async with asyncio.timeout(20):
        async with _running(node, runtime) as miner:
            failure = (await miner.control("failure")).failure
    assert node.body_sent.is_set()
    assert failure.dispatch_token == TOKEN
    assert failure.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "ended the data plane before the body did" in failure.status.message


async def test_a_dservice_that_answers_before_reading_gets_no_more_and_the_answer_goes_out(
    runtime: ProcessRuntime,
) -> None:
    """The DService refuses at once (413) without reading the body: the miner stops sending
    it, answers the unit with the refusal on the data plane, and reads the rest the node
    sends without passing it on."""
    node = ScriptedNode(LARGE)
    node.headers = [("X-Answer-Early", b"1")]
    async with asyncio.timeout(60):
        async with _running(node, runtime) as miner:
            exchanged = await miner.exchanged()
            await node.body_sent.wait()  # the node could send it all: nothing was stuck
    assert exchanged[0].response.head.status_code == 413
    assert exchanged[-1].completion.usage.bytes_in == LARGE
