"""The node's MinerLinkService: one bidi stream per miner (SPEC sections 4 and 7).

Each node message carries a fresh nonce; the miner's ack and result echo it as
``response_nonce`` (Envoy ADS style). A miner whose hello does not verify at Central is
refused with UNAUTHENTICATED; an accepted miner joins the broker's pool until its stream ends.

A dispatch carries its timeout and a heartbeat lease. The miner must ack within the ack
deadline, then be heard from (progress, response) at least once per lease; a miner that goes
silent is sent a ``WorkCancel`` and dropped, and the broker re-dispatches. When the unit's
deadline passes, or the DApp goes away, the miner is sent a ``WorkCancel`` and stays.
A ``WorkFailure`` is the DService's failure (502), never the miner's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc

from cgn_common.errors import CgnError, DeadlineExceededError, DServiceFailedError
from cgn_common.ids import new_id
from cgn_common.logs import log_event
from cgn_common.streams import StreamWriter, read_hello
from cgn_common.tasks import Supervisor
from cgn_common.types import Tier
from cgn_node._convert import assignment, result_from_parts
from cgn_node.broker import Broker, MinerFailedError, MinerRefusedError
from cgn_node.central_client import CentralClient
from cgn_node.work import WorkResult, WorkUnit
from generated.cgn.common.v1 import http_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)

#: grpc ships no type stubs, so the servicer context is untyped.
Context: TypeAlias = Any

_MAX_CONCURRENCY = 256


def _settle(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Fails ``future`` if pending, and marks the exception retrieved: nobody may be awaiting
    it (a unit already given up), and asyncio would log it as never retrieved."""
    if not future.done():
        future.set_exception(exc)
        future.exception()


@dataclass(eq=False)
class _Pending:
    nonce: str
    ack: asyncio.Future[pb.WorkAck]
    result: asyncio.Future[WorkResult]
    heard: float = field(default_factory=time.monotonic)
    head: http_pb2.HttpResponseHead | None = None
    chunks: list[bytes] = field(default_factory=list)


class MinerConnection:
    """One connected miner; implements the broker's MinerHandle."""

    def __init__(
        self,
        writer: StreamWriter,
        *,
        miner_id: str,
        tier: Tier,
        owner_account_id: str,
        dservices: frozenset[str],
        capacity: int,
        ack_deadline_s: float,
        lease_s: float,
        supervisor: Supervisor,
    ) -> None:
        self.miner_id = miner_id
        self.tier = tier
        self.owner_account_id = owner_account_id
        self.dservices = dservices
        self.capacity = capacity
        self.connection_id = new_id("conn")
        self._writer = writer
        self._ack_deadline_s = ack_deadline_s
        self._lease_s = lease_s
        self._supervisor = supervisor
        self._nonces = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.cancels_sent = 0

    def next_nonce(self) -> str:
        """A fresh nonce for the next node message."""
        return f"{self.connection_id[-8:]}-{next(self._nonces)}"

    async def send(self, message: pb.ConnectResponse) -> None:
        """Writes one message; writes are serialized."""
        await self._writer.send(message)

    def _cancel(self, unit: WorkUnit, reason: str) -> None:
        """Tells the miner to stop ``unit`` (best effort, in the background)."""
        if self.closed.is_set():
            return
        self.cancels_sent += 1
        message = pb.ConnectResponse(
            nonce=self.next_nonce(), cancel=pb.WorkCancel(work_id=unit.work_id, reason=reason)
        )
        self._supervisor.spawn(f"cancel-{unit.work_id}", self._send_quietly(message))

    async def _send_quietly(self, message: pb.ConnectResponse) -> None:
        try:
            await self.send(message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError, CgnError) as exc:
            log_event(_log, "miner_send_failed", miner_id=self.miner_id, error=repr(exc))

    async def run(self, unit: WorkUnit) -> WorkResult:
        """Dispatches ``unit``, waits for the ack, then for the result under the lease."""
        if self.closed.is_set():
            raise MinerFailedError("miner disconnected")
        loop = asyncio.get_running_loop()
        pending = _Pending(self.next_nonce(), loop.create_future(), loop.create_future())
        self._pending[unit.work_id] = pending
        try:
            return await self._run(unit, pending)
        except asyncio.CancelledError:
            self._cancel(unit, "the caller went away")
            raise
        except DeadlineExceededError:
            self._cancel(unit, "deadline exceeded")
            raise
        finally:
            self._pending.pop(unit.work_id, None)

    async def _run(self, unit: WorkUnit, pending: _Pending) -> WorkResult:
        remaining = unit.remaining_s()
        if remaining <= 0:
            raise DeadlineExceededError("the deadline passed before dispatch")
        message = assignment(unit, timeout_s=remaining, lease_s=self._lease_s)
        try:
            await self.send(pb.ConnectResponse(nonce=pending.nonce, assignment=message))
        except Exception as exc:  # any failure to write (e.g. grpc's ExecuteBatchError)
            raise MinerFailedError(f"cannot send to miner: {exc!r}") from exc
        ack_wait = min(self._ack_deadline_s, unit.remaining_s())
        try:
            async with asyncio.timeout(max(0.0, ack_wait)):
                ack = await asyncio.shield(pending.ack)
        except TimeoutError:
            if unit.remaining_s() <= 0:
                raise DeadlineExceededError("the deadline passed waiting for the ack") from None
            raise MinerFailedError(
                f"no ack within {self._ack_deadline_s * 1000:.0f} ms: miner declared down"
            ) from None
        if ack.HasField("refusal"):
            raise MinerRefusedError(f"miner refused work: {ack.refusal.message}")
        while True:
            now = time.monotonic()
            lease_left = pending.heard + self._lease_s - now
            if lease_left <= 0:
                self._cancel(unit, "lease expired")
                raise MinerFailedError(
                    f"miner silent for {self._lease_s * 1000:.0f} ms: declared down"
                )
            if unit.remaining_s() <= 0:
                raise DeadlineExceededError("the DService did not answer before the deadline")
            done, _ = await asyncio.wait(
                {pending.result}, timeout=min(lease_left, unit.remaining_s())
            )
            if done:
                return pending.result.result()

    def on_message(self, message: pb.ConnectRequest) -> None:
        """Routes one miner message to the work unit it belongs to."""
        kind = message.WhichOneof("kind")
        if kind == "work_ack":
            p = self._pending.get(message.work_ack.work_id)
            if p and not p.ack.done() and message.response_nonce == p.nonce:
                p.heard = time.monotonic()
                p.ack.set_result(message.work_ack)
        elif kind == "progress":
            p = self._pending.get(message.progress.work_id)
            if p is not None:
                p.heard = time.monotonic()
        elif kind == "response":
            r = message.response
            p = self._pending.get(r.work_id)
            if p is None:
                return
            p.heard = time.monotonic()
            if r.body_complete:
                self._finish(p, result_from_parts(r.head, r.body, r.completion.usage))
            else:
                p.head = r.head
                p.chunks.append(r.body)
        elif kind == "response_body":
            p = self._pending.get(message.response_body.work_id)
            if p is not None:
                p.heard = time.monotonic()
                p.chunks.append(message.response_body.data)
        elif kind == "completion":
            p = self._pending.get(message.completion.work_id)
            if p is not None and p.head is not None:
                body = b"".join(p.chunks)
                self._finish(p, result_from_parts(p.head, body, message.completion.usage))
        elif kind == "failure":
            p = self._pending.get(message.failure.work_id)
            if p is not None:
                if not p.ack.done():
                    p.ack.set_result(pb.WorkAck(work_id=message.failure.work_id))
                _settle(p.result, DServiceFailedError(message.failure.status.message))

    @staticmethod
    def _finish(p: _Pending, result: WorkResult) -> None:
        if not p.ack.done():  # a result implies the ack
            p.ack.set_result(pb.WorkAck())
        if not p.result.done():
            p.result.set_result(result)

    def fail_all(self, reason: str) -> None:
        """Fails every in-flight unit so the broker re-dispatches it."""
        self.closed.set()
        for p in self._pending.values():
            _settle(p.ack, MinerFailedError(reason))
            _settle(p.result, MinerFailedError(reason))

    def close(self, reason: str) -> None:
        """Drops the stream (the handler sees closed and returns)."""
        self.close_reason = reason
        self.fail_all(reason)


class MinerLink(pb_grpc.MinerLinkServiceServicer):
    """Accepts miners and puts them in the broker's pool."""

    def __init__(
        self,
        broker: Broker,
        central: CentralClient,
        node_id: str,
        *,
        ack_deadline_s: float,
        lease_s: float,
        supervisor: Supervisor,
    ) -> None:
        self._broker = broker
        self._central = central
        self._node_id = node_id
        self._ack_deadline_s = ack_deadline_s
        self._lease_s = lease_s
        self._supervisor = supervisor

    # A read/write-style bidi handler (context.read/write), which grpc.aio allows in place of
    # the async generator the stub's signature names.
    async def Connect(  # type: ignore[override]  # noqa: N802
        self, request_iterator: Any, context: Context
    ) -> None:
        """Serves one miner's stream until it ends or the miner is dropped."""
        hello = await read_hello(context, "hello", "MinerHello")
        info = await self._central.verify_miner(hello.miner_id, hello.api_key)
        tier = info.account.tier
        if tier is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "miner account has no tier")
            return
        miner = MinerConnection(
            StreamWriter(context.write),
            miner_id=hello.miner_id,
            tier=tier,
            owner_account_id=info.owner_account_id,
            dservices=frozenset(d.name for d in hello.dservices),
            capacity=max(1, min(hello.max_concurrent_work_units or 1, _MAX_CONCURRENCY)),
            ack_deadline_s=self._ack_deadline_s,
            lease_s=self._lease_s,
            supervisor=self._supervisor,
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
        if reader.done() and not reader.cancelled():
            exc = reader.exception()
            if exc is not None and not isinstance(exc, grpc.aio.AioRpcError):
                log_event(_log, "miner_reader_failed", logging.ERROR, exc=exc)
        if miner.close_reason:
            await context.abort(grpc.StatusCode.ABORTED, miner.close_reason)

    @staticmethod
    async def _read(context: Context, miner: MinerConnection) -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            if message.WhichOneof("kind") == "goodbye":
                return
            miner.on_message(message)
