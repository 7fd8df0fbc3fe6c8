"""Bodies on the data plane, through the real processes of the sandbox: a body too large to go
inline reaches the DService whole (the miner fetched it on the dispatch's data plane; were
it not, the DService would see an empty body) and its answer comes back whole, while small
requests on the same miners keep being answered."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator

import aiohttp

from cgn_common.rpc import open_channel
from generated.cgn.common.v1 import http_pb2, resources_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers.sandbox import RunningSandbox, peak_rss_mib, reset_peak_rss


async def test_a_large_body_goes_both_ways_while_small_requests_keep_flowing(
    sandbox: RunningSandbox,
) -> None:
    async with aiohttp.ClientSession() as http:
        token = await sandbox.session_token()
        auth = {"Authorization": f"Bearer {token}"}
        body = os.urandom(24 * 1024 * 1024)

        async def large() -> bytes:
            async with http.post(
                f"{sandbox.url}/v1/dservices/echo/large", data=io.BytesIO(body), headers=auth
            ) as answer:
                assert answer.status == 200, await answer.text()
                return await answer.read()

        async def small(n: int) -> int:
            async with http.get(
                f"{sandbox.url}/v1/dservices/echo/small/{n}", headers=auth
            ) as answer:
                await answer.read()
                return answer.status

        big = asyncio.create_task(large())
        statuses = await asyncio.gather(*(small(n) for n in range(40)))
        echoed = await asyncio.wait_for(big, 60)
    assert statuses == [200] * 40
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(body).hexdigest()


async def _call_stream(
    sb: RunningSandbox, path: str, headers: list[tuple[str, bytes]], body: bytes = b""
) -> list[tuple[float, work_pb.CallStreamResponse]]:
    """A CallStream straight to the node (as an internal service calls it): each answer
    message with the seconds since the call began."""
    token = await sb.session_token()
    address = sb.info["processes"]["node"]["endpoints"]["work"]

    async def requests() -> AsyncIterator[work_pb.CallStreamRequest]:
        head = http_pb2.HttpRequestHead(
            method="POST" if body else "GET",
            path=path,
            headers=[http_pb2.HttpHeader(name=n, value=v) for n, v in headers],
        )
        yield work_pb.CallStreamRequest(start=work_pb.CallStart(dservice="echo", head=head))
        for at in range(0, len(body), 1 << 20):
            piece = body[at : at + (1 << 20)]
            end = at + len(piece) == len(body)
            yield work_pb.CallStreamRequest(body=http_pb2.BodyChunk(data=piece, end_of_body=end))

    got: list[tuple[float, work_pb.CallStreamResponse]] = []
    async with open_channel(address, sb.tls()) as channel:
        began = time.monotonic()
        call = work_grpc.WorkServiceStub(channel).CallStream(
            requests(), metadata=(("authorization", f"Bearer {token}"),), timeout=60
        )
        async for message in call:
            got.append((time.monotonic() - began, message))
    return got


async def test_a_streamed_answer_reaches_a_grpc_caller_line_by_line(
    sandbox: RunningSandbox,
) -> None:
    got = await _call_stream(sandbox, "/drip", [("X-Echo-Drip", b"15x200")])
    kinds = [m.WhichOneof("kind") for _, m in got]
    assert kinds[0] == "head"
    assert kinds[-1] == "receipt"
    lines = [(t, m.body.data) for t, m in got if m.WhichOneof("kind") == "body"]
    assert b"".join(d for _, d in lines) == b"".join(b"line %d\n" % n for n in range(1, 16))
    first, last = lines[0][0], lines[-1][0]
    # The DService takes 2.8 s to finish; its first line must not wait for the rest.
    assert first < 1.0, f"first line after {first:.3f} s"
    assert last - first > 2.0  # they came as they were written, not all at once
    assert not got[0][1].head.HasField("content_length")  # length unknown: streamed


async def test_a_large_body_goes_both_ways_through_callstream(sandbox: RunningSandbox) -> None:
    body = os.urandom(8 * 1024 * 1024 + 17)
    got = await _call_stream(sandbox, "/large", [], body)
    echoed = b"".join(m.body.data for _, m in got if m.WhichOneof("kind") == "body")
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(body).digest()
    receipt = got[-1][1].receipt
    assert receipt.usage.bytes_in == receipt.usage.bytes_out == len(body)
    # The receipt says how the miner measured the CPU (metering methods are kept).
    assert receipt.usage.cpu_time_metering in (
        resources_pb2.METERING_METHOD_ISOLATED,
        resources_pb2.METERING_METHOD_APPORTIONED,
    )


async def test_a_512_mib_answer_streams_through_node_and_miner_in_bounded_memory(
    sandbox: RunningSandbox,
) -> None:
    size = 512 * 1024 * 1024
    watched = {
        name: int(process["pid"])
        for name, process in sandbox.info["processes"].items()
        if name == "node" or name.startswith("miner")
    }
    for pid in watched.values():
        reset_peak_rss(pid)
    got = await _call_stream(sandbox, "/large", [("X-Echo-Generate-Bytes", str(size).encode())])
    received = sum(len(m.body.data) for _, m in got if m.WhichOneof("kind") == "body")
    assert received == size
    assert got[-1][1].receipt.usage.bytes_out == size
    # Neither process held the answer: their peaks during it stay far below its size.
    for name, pid in watched.items():
        peak = peak_rss_mib(pid)
        assert peak < 256, f"{name} peaked at {peak:.0f} MiB"
