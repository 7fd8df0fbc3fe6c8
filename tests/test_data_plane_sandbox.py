"""Bodies on the data plane, through the real processes of the sandbox: a body too large to go
inline reaches the DService whole (the miner fetched it on the dispatch's data plane; were
it not, the DService would see an empty body) and its answer comes back whole, while small
requests on the same miners keep being answered."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time
from collections.abc import AsyncIterator

import aiohttp

from cgn_common.ids import new_id
from cgn_common.rpc import open_channel
from generated.cgn.common.v1 import http_pb2, resources_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers import http1, journal
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


MIB = 1024 * 1024


def _miner_down_events(sb: RunningSandbox) -> int:
    """How often the node has given up on a dispatch or seen a miner leave so far."""
    text = (sb.state_dir / "logs" / "node.log").read_text()
    return sum(text.count(f'"event": "{e}"') for e in ("dispatch_failed", "miner_left"))


async def test_a_gigabyte_each_way_through_the_gateway_in_bounded_memory_beside_small_requests(
    sandbox: RunningSandbox,
) -> None:
    size = 1024 * MIB
    watched = sandbox.cgn_processes()
    for pid in watched.values():
        reset_peak_rss(pid)
    seed = os.urandom(MIB)
    sent_digest = hashlib.sha256()
    for n in range(size // MIB):
        sent_digest.update(seed[n:] + seed[:n])
    # What X-Echo-Generate-Bytes sends: every byte value in turn, 256 KiB over and over.
    pattern_digest = hashlib.sha256(bytes(range(256)) * 1024 * (size // (256 * 1024)))
    down_before = _miner_down_events(sandbox)
    up_id, down_id = new_id("up"), new_id("down")

    async def body() -> AsyncIterator[bytes]:
        for n in range(size // MIB):
            yield seed[n:] + seed[:n]

    token = await sandbox.session_token()
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:

        async def upload() -> object:
            headers = {
                **auth,
                "X-Echo-Digest": "sha256",
                "Content-Length": str(size),
                "X-Request-Id": up_id,
            }
            async with http.post(
                f"{sandbox.url}/v1/dservices/echo/up", data=body(), headers=headers
            ) as answer:
                assert answer.status == 200, await answer.text()
                return await answer.json()

        async def download() -> tuple[str, int]:
            headers = {**auth, "X-Echo-Generate-Bytes": str(size), "X-Request-Id": down_id}
            got = hashlib.sha256()
            received = 0
            async with http.get(f"{sandbox.url}/v1/dservices/echo/down", headers=headers) as a:
                assert a.status == 200, await a.text()
                async for chunk in a.content.iter_chunked(MIB):
                    got.update(chunk)
                    received += len(chunk)
            return got.hexdigest(), received

        transfers = asyncio.gather(upload(), download())
        statuses: dict[str, int] = {}

        async def small() -> None:
            while not transfers.done():  # only while the large bodies are on their way
                request_id = new_id("small")
                headers = {**auth, "X-Request-Id": request_id}
                async with http.get(f"{sandbox.url}/v1/dservices/echo/small", headers=headers) as a:
                    await a.read()
                    statuses[request_id] = a.status

        smalls = asyncio.gather(*(small() for _ in range(4)))
        uploaded, (downloaded, received) = await asyncio.wait_for(transfers, 300)
        await asyncio.wait_for(smalls, 60)
    assert uploaded == {"sha256": sent_digest.hexdigest(), "size": size}
    assert (downloaded, received) == (pattern_digest.hexdigest(), size)
    assert set(statuses.values()) == {200}, statuses
    # At least 100 of them ran on a miner that was carrying a large body meanwhile.
    runs = journal.by_request(sandbox.state_dir.parent / "journal", "start")
    carriers = {runs[up_id][0]["miner_pid"], runs[down_id][0]["miner_pid"]}
    beside = [r for r in statuses if runs[r][0]["miner_pid"] in carriers]
    assert len(beside) >= 100, (len(beside), len(statuses))
    assert _miner_down_events(sandbox) == down_before  # no miner was declared down
    for name, pid in watched.items():
        peak = peak_rss_mib(pid)
        assert peak < 256, f"{name} peaked at {peak:.0f} MiB"


async def test_a_dripping_dservice_reaches_the_dapp_line_by_line_through_the_gateway(
    sandbox: RunningSandbox,
) -> None:
    token = await sandbox.session_token()
    # The request's deadline (1 s) covers the work until the answer's head, not the 2.8 s
    # the DService then takes to send its body: it must not cut the answer.
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Echo-Drip": "15x200",
        "X-CGN-Timeout-Ms": "1000",
    }
    async with aiohttp.ClientSession() as http:
        began = time.monotonic()
        async with http.get(f"{sandbox.url}/v1/dservices/echo/drip", headers=headers) as a:
            assert a.status == 200
            assert a.headers.get("Transfer-Encoding") == "chunked"  # no length: chunked
            first = await a.content.readline()
            first_s = time.monotonic() - began
            rest = await a.read()
        last_s = time.monotonic() - began
    assert first + rest == b"".join(b"line %d\n" % n for n in range(1, 16))
    # The DService takes 2.8 s to finish; its first line must not wait for the rest.
    assert first_s < 1.0, f"first line after {first_s:.3f} s"
    assert last_s - first_s > 2.0


async def test_a_chunked_upload_streams_through_the_gateway_whole(
    sandbox: RunningSandbox,
) -> None:
    body = os.urandom(3 * MIB + 5)

    async def chunks() -> AsyncIterator[bytes]:  # no length: aiohttp sends it chunked
        for at in range(0, len(body), 100_000):
            yield body[at : at + 100_000]

    token = await sandbox.session_token()
    headers = {"Authorization": f"Bearer {token}", "X-Echo-Digest": "sha256"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sandbox.url}/v1/dservices/echo/up", data=chunks(), headers=headers) as answer,
    ):
        assert answer.status == 200, await answer.text()
        got = await answer.json()
    assert got == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}


async def test_a_3_gib_upload_is_refused_with_a_json_413_before_it_is_read(
    sandbox: RunningSandbox,
) -> None:
    token = await sandbox.session_token()
    host, _, port = sandbox.url.removeprefix("http://").rpartition(":")
    for expect in ([], [(b"Expect", b"100-continue")]):
        # Only the head is sent: an answer means the gateway did not wait for the body.
        answer = await http1.exchange(
            host,
            int(port),
            b"POST",
            b"/v1/dservices/echo/up",
            [
                (b"Host", b"cgn"),
                (b"Authorization", f"Bearer {token}".encode()),
                (b"Content-Length", str(3 * 1024**3).encode()),
                *expect,
            ],
            send_body=False,
        )
        assert answer.status == 413, answer
        assert json.loads(answer.body)["error"]["reason"] == "BODY_TOO_LARGE"
        assert answer.values(b"Connection") == [b"close"]
    after = f"{sandbox.url}/v1/dservices/echo/after"  # and it keeps serving
    async with (
        aiohttp.ClientSession() as http,
        http.get(after, headers={"Authorization": f"Bearer {token}"}) as a,
    ):
        assert a.status == 200
