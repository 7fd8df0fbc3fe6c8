"""The miner link's optional features (docs/miner-protocol.md, "Features"), from the miner's
side: its real link session (``LinkSession``) and the real echo DService against a scripted
node (a gRPC MinerLinkService in process) that offers them, or not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from generated.cgn.common.v1 import http_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc
from miner.runtime import ProcessRuntime
from tests.helpers.scripted_node import miner_linked_to

#: The slow unit's DService holds its answer this long: past the miner's Ack hold (a tenth
#: of the ack deadline below), well inside the ack deadline.
SLOW_MS = 700
ACK_DEADLINE_MS = 3000


def _assignment(token: str, hold_ms: int = 0) -> pb.WorkAssignment:
    headers = [http_pb2.HttpHeader(name="X-Echo-Hold-Ms", value=str(hold_ms).encode())]
    assignment = pb.WorkAssignment(
        work_id=f"w-{token}",
        dispatch_token=token,
        dservice="echo",
        head=http_pb2.HttpRequestHead(method="POST", path="/e", headers=headers if hold_ms else []),
        body=b"hi",
        body_complete=True,
        body_size=2,
    )
    assignment.timeout.FromSeconds(30)
    assignment.lease.FromSeconds(30)
    return assignment


class ScriptedNode(pb_grpc.MinerLinkServiceServicer):
    """Welcomes the miner with ``features``, then sends a fast and a slow assignment at once
    (in one NodeBatch when the miner reads batches). Every miner message comes out in
    ``received`` as (message, whether it came inside a MinerBatch, the batch's kinds)."""

    def __init__(self, features: list[str]) -> None:
        self.features = features
        self.hello_features: list[str] = []
        self.received: asyncio.Queue[tuple[pb.ConnectRequest, tuple[str, ...]]] = asyncio.Queue()

    async def Connect(  # type: ignore[override]  # noqa: N802
        self, request_iterator: Any, context: Any
    ) -> None:
        hello = await context.read()
        self.hello_features = list(hello.hello.features)
        welcome = pb.Welcome(node_id="scripted", features=self.features)
        welcome.ack_deadline.FromMilliseconds(ACK_DEADLINE_MS)
        await context.write(pb.ConnectResponse(nonce="n0", welcome=welcome))
        fast = pb.ConnectResponse(nonce="n1", assignment=_assignment("fast"))
        slow = pb.ConnectResponse(nonce="n2", assignment=_assignment("slow", SLOW_MS))
        if "batch" in self.hello_features and "batch" in self.features:
            await context.write(pb.ConnectResponse(batch=pb.NodeBatch(messages=[fast, slow])))
        else:
            await context.write(fast)
            await context.write(slow)
        while (message := await context.read()) is not grpc.aio.EOF:
            if message.WhichOneof("kind") == "batch":
                kinds = tuple(m.WhichOneof("kind") for m in message.batch.messages)
                for inner in message.batch.messages:
                    self.received.put_nowait((inner, kinds))
            else:
                self.received.put_nowait((message, ()))

    async def Exchange(  # type: ignore[override]  # noqa: N802
        self, request_iterator: Any, context: Any
    ) -> None:
        raise AssertionError("no data plane: every body here travels inline")

    async def until_answered(self) -> list[tuple[pb.ConnectRequest, tuple[str, ...]]]:
        """Every miner message until both units were answered."""
        got: list[tuple[pb.ConnectRequest, tuple[str, ...]]] = []
        answered = 0
        async with asyncio.timeout(20):
            while answered < 2:
                got.append(await self.received.get())
                answered += got[-1][0].WhichOneof("kind") == "response"
        return got


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    runtime = ProcessRuntime(names=["echo"], state_dir=tmp_path / "state")
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def _of(got: list[tuple[pb.ConnectRequest, tuple[str, ...]]], nonce: str) -> list[str]:
    return [str(m.WhichOneof("kind")) for m, _ in got if m.response_nonce == nonce]


async def test_with_the_features_a_fast_answer_acknowledges_and_carries_its_slots(
    runtime: ProcessRuntime,
) -> None:
    node = ScriptedNode(["batch", "answer_acks"])
    async with miner_linked_to(node, runtime, slots=4):
        got = await node.until_answered()
    assert node.hello_features == ["batch"]
    # The fast unit: no Ack (its answer came within the hold), and the answer went out in one
    # MinerBatch with the WorkSlots its end freed.
    assert "ack" not in _of(got, "n1")
    answer, batched_with = next((m, k) for m, k in got if m.WhichOneof("kind") == "response")
    assert answer.response.dispatch_token == "fast"
    assert batched_with[:2] == ("response", "slots")
    # The slow unit: its Ack went once the hold passed, before its answer.
    slow = _of(got, "n2")
    assert slow.index("ack") < slow.index("response")


async def test_without_the_features_every_assignment_is_acked_at_once_and_nothing_batched(
    runtime: ProcessRuntime,
) -> None:
    node = ScriptedNode([])
    async with miner_linked_to(node, runtime, slots=4):
        got = await node.until_answered()
    assert all(kinds == () for _, kinds in got)
    for nonce in ("n1", "n2"):
        kinds = _of(got, nonce)
        assert kinds.index("ack") < kinds.index("response")
