"""The node's MinerLinkService: one bidi stream per miner (SPEC sections 4 and 7).

Each node message carries a fresh nonce; the miner's ack and result echo it as
``response_nonce`` (Envoy ADS style). A miner whose hello does not verify at Central is
refused with UNAUTHENTICATED; an accepted miner joins the broker's pool until its stream ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc

from cgn_common.errors import CgnError
from cgn_common.ids import new_id
from cgn_common.logs import log_event
from cgn_common.types import Tier
from cgn_node.broker import Broker, MinerFailedError, WorkUnit
from cgn_node.central_client import CentralClient
from generated.cgn.common.v1 import http_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)

#: grpc ships no type stubs, so the servicer context is untyped.
Context: TypeAlias = Any

_MAX_CONCURRENCY = 256


@dataclass(frozen=True)
class MinerResult:
    """What a miner returned for one work unit."""

    head: http_pb2.HttpResponseHead
    body: bytes
    completion: pb.WorkCompletion


@dataclass(eq=False)
class _Pending:
    nonce: str
    ack: asyncio.Future[pb.WorkAck]
    result: asyncio.Future[MinerResult]
    head: http_pb2.HttpResponseHead | None = None
    chunks: list[bytes] = field(default_factory=list)


class MinerConnection:
    """One connected miner; implements the broker's MinerHandle."""

    def __init__(
        self,
        context: Context,
        *,
        miner_id: str,
        tier: Tier,
        owner_account_id: str,
        dservices: frozenset[str],
        capacity: int,
        ack_deadline_s: float,
    ) -> None:
        self.miner_id = miner_id
        self.tier = tier
        self.owner_account_id = owner_account_id
        self.dservices = dservices
        self.capacity = capacity
        self.connection_id = new_id("conn")
        self._context = context
        self._ack_deadline_s = ack_deadline_s
        self._lock = asyncio.Lock()
        self._nonces = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self.closed = asyncio.Event()
        self.close_reason = ""

    def next_nonce(self) -> str:
        """A fresh nonce for the next node message."""
        return f"{self.connection_id[-8:]}-{next(self._nonces)}"

    async def send(self, message: pb.ConnectResponse) -> None:
        """Writes one message; writes are serialized."""
        async with self._lock:
            await self._context.write(message)

    async def run(self, unit: WorkUnit) -> MinerResult:
        """Sends the assignment, waits for the ack within the deadline, then the result."""
        if self.closed.is_set():
            raise MinerFailedError("miner disconnected")
        loop = asyncio.get_running_loop()
        pending = _Pending(self.next_nonce(), loop.create_future(), loop.create_future())
        self._pending[unit.work_id] = pending
        try:
            try:
                await self.send(pb.ConnectResponse(nonce=pending.nonce, assignment=unit.payload))
            except (grpc.aio.AioRpcError, RuntimeError, asyncio.InvalidStateError) as exc:
                raise MinerFailedError(f"cannot send to miner: {exc}") from exc
            try:
                ack = await asyncio.wait_for(asyncio.shield(pending.ack), self._ack_deadline_s)
            except TimeoutError:
                raise MinerFailedError(
                    f"no ack within {self._ack_deadline_s * 1000:.0f} ms: miner declared down"
                ) from None
            if ack.HasField("refusal"):
                raise MinerFailedError(f"miner refused work: {ack.refusal.message}")
            return await pending.result
        finally:
            self._pending.pop(unit.work_id, None)

    def on_message(self, message: pb.ConnectRequest) -> None:
        """Routes one miner message to the work unit it belongs to."""
        kind = message.WhichOneof("kind")
        if kind == "work_ack":
            p = self._pending.get(message.work_ack.work_id)
            if p and not p.ack.done() and message.response_nonce == p.nonce:
                p.ack.set_result(message.work_ack)
        elif kind == "response":
            r = message.response
            p = self._pending.get(r.work_id)
            if p is None:
                return
            if r.body_complete:
                self._finish(p, MinerResult(r.head, r.body, r.completion))
            else:
                p.head = r.head
                p.chunks.append(r.body)
        elif kind == "response_body":
            p = self._pending.get(message.response_body.work_id)
            if p is not None:
                p.chunks.append(message.response_body.data)
        elif kind == "completion":
            p = self._pending.get(message.completion.work_id)
            if p is not None and p.head is not None:
                self._finish(p, MinerResult(p.head, b"".join(p.chunks), message.completion))
        elif kind == "failure":
            p = self._pending.get(message.failure.work_id)
            if p is not None:
                if not p.ack.done():
                    p.ack.set_result(pb.WorkAck(work_id=message.failure.work_id))
                if not p.result.done():
                    p.result.set_exception(MinerFailedError(message.failure.status.message))

    @staticmethod
    def _finish(p: _Pending, result: MinerResult) -> None:
        if not p.ack.done():  # a result implies the ack
            p.ack.set_result(pb.WorkAck(work_id=result.completion.work_id))
        if not p.result.done():
            p.result.set_result(result)

    def fail_all(self, reason: str) -> None:
        """Fails every in-flight unit so the broker re-dispatches it."""
        self.closed.set()
        for p in self._pending.values():
            for future in (p.ack, p.result):
                if not future.done():
                    future.set_exception(MinerFailedError(reason))

    def close(self, reason: str) -> None:
        """Drops the stream (the handler sees closed and returns)."""
        self.close_reason = reason
        self.fail_all(reason)


class MinerLink(pb_grpc.MinerLinkServiceServicer):
    """Accepts miners and puts them in the broker's pool."""

    def __init__(
        self, broker: Broker, central: CentralClient, node_id: str, ack_deadline_s: float
    ) -> None:
        self._broker = broker
        self._central = central
        self._node_id = node_id
        self._ack_deadline_s = ack_deadline_s

    # A read/write-style bidi handler (context.read/write), which grpc.aio allows in place of
    # the async generator the stub's signature names.
    async def Connect(  # type: ignore[override]  # noqa: N802
        self, request_iterator: Any, context: Context
    ) -> None:
        """Serves one miner's stream until it ends or the miner is dropped."""
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected MinerHello first")
        hello = first.hello
        try:
            info = await self._central.verify_miner(hello.miner_id, hello.api_key)
        except CgnError as exc:
            await context.abort(exc.code, exc.message)
        tier = info.account.tier
        if tier is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "miner account has no tier")
            return
        miner = MinerConnection(
            context,
            miner_id=hello.miner_id,
            tier=tier,
            owner_account_id=info.owner_account_id,
            dservices=frozenset(d.name for d in hello.dservices),
            capacity=max(1, min(hello.max_concurrent_work_units or 1, _MAX_CONCURRENCY)),
            ack_deadline_s=self._ack_deadline_s,
        )
        welcome = pb.Welcome(
            node_id=self._node_id,
            tier=int(miner.tier),  # type: ignore[arg-type]
            max_grade=int(info.max_grade),  # type: ignore[arg-type]
            connection_id=miner.connection_id,
        )
        welcome.ack_deadline.FromMilliseconds(int(self._ack_deadline_s * 1000))
        welcome.availability_interval.FromSeconds(10)
        await miner.send(pb.ConnectResponse(nonce=miner.next_nonce(), welcome=welcome))
        self._broker.add_miner(miner)
        reader = asyncio.create_task(self._read(context, miner))
        closed = asyncio.create_task(miner.closed.wait())
        try:
            await asyncio.wait({reader, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            closed.cancel()
            self._broker.remove_miner(miner)
            miner.fail_all("miner disconnected")
            log_event(
                _log,
                "miner_stream_closed",
                miner_id=miner.miner_id,
                reason=miner.close_reason or "stream ended",
            )
        if miner.close_reason:
            await context.abort(grpc.StatusCode.ABORTED, miner.close_reason)

    @staticmethod
    async def _read(context: Context, miner: MinerConnection) -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            if message.WhichOneof("kind") == "goodbye":
                return
            miner.on_message(message)
