"""The node's MinerLinkService: one bidi stream per miner (SPEC sections 4 and 7; the
protocol is docs/miner-protocol.md).

Each node message carries a fresh nonce; the miner's Ack (or NACK: an Ack with
``error_detail``) and every later message about a dispatch echo it as ``response_nonce``
(Envoy ADS style); work messages also carry the dispatch's ``dispatch_token``. The miner's
``WorkSlots`` say how much more it can take, and the broker never pushes more. A miner whose
hello does not verify at Central is refused with UNAUTHENTICATED; an accepted miner joins the
broker's pool until its stream ends or it is drained.

A dispatch carries its timeout and a heartbeat lease. The miner must ack within the ack
deadline, then be heard from (progress, response) at least once per lease; a miner that goes
silent is sent a ``WorkCancel`` and dropped, and the broker re-dispatches. When the unit's
deadline passes, or the DApp goes away, the miner is sent a ``WorkCancel`` and stays; it
answers with a ``WorkCompletion`` carrying the usage up to the cancel, which the unit's
``cancelled`` report receives (abandoned work is billed for it, SPEC 15).
A ``WorkFailure`` is the DService's failure (502), never the miner's.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc

from cgn_common.errors import (
    AbortedError,
    DeadlineExceededError,
    DServiceFailedError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from cgn_common.ids import new_id
from cgn_common.logs import log_event
from cgn_common.streams import BODY_CHUNK_BYTES, INLINE_BODY_BYTES, StreamWriter, read_hello
from cgn_common.types import Tier
from cgn_node._convert import assignment, result_from_parts, usage_from_proto
from cgn_node.broker import Broker, MinerFailedError, MinerRefusedError
from cgn_node.central_client import CentralClient
from cgn_node.work import CancelReport, HttpRequest, ResponseBody, Usage, WorkResult, WorkUnit
from generated.cgn.common.v1 import http_pb2, resources_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)

#: grpc ships no type stubs, so the servicer context is untyped.
Context: TypeAlias = Any

_MAX_CONCURRENCY = 256
#: The optional protocol features (docs/miner-protocol.md, "Features"): "batch", several
#: messages in one either way when both sides list it; "answer_acks", an answer within the ack
#: deadline acknowledges its assignment (the node has always read it so).
BATCH = "batch"
NODE_FEATURES = (BATCH, "answer_acks")
#: The largest answer the node holds for a unary Call (a larger one fails the unit: bounded
#: memory whatever a miner sends).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def _settle(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Fails ``future`` if pending, and marks the exception retrieved: nobody may be awaiting
    it (a unit already given up), and asyncio would log it as never retrieved."""
    if not future.done():
        future.set_exception(exc)
        future.exception()


@dataclass(eq=False)
class _Pending:
    nonce: str
    token: str
    ack: asyncio.Future[None]
    result: asyncio.Future[WorkResult]
    heard: float = field(default_factory=time.monotonic)
    head: http_pb2.HttpResponseHead | None = None
    chunks: list[bytes] = field(default_factory=list)
    #: Response bytes received so far (bounded by MAX_RESPONSE_BYTES).
    size: int = 0
    #: The request, whose body is served on the data plane when it did not go inline.
    request: HttpRequest | None = None
    #: The unit's streamed answer (a CallStream caller), and whether its head was relayed:
    #: from then on the body goes to ``stream`` slice by slice.
    stream: ResponseBody | None = None
    streaming: bool = False
    #: The miner's last word on the unit came (its whole answer, or its failure): the unit no
    #: longer holds a slot on the miner, while the broker still counts it until its run ends.
    answered: bool = False


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
        on_slots: Callable[[int], None] = lambda free: None,
        on_given_up: Callable[[], None] = lambda: None,
        tokens: dict[str, MinerConnection] | None = None,
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
        self._nonces = itertools.count(1)
        self._prefix = self.connection_id[-8:]
        #: dispatch token -> the dispatch.
        self._pending: dict[str, _Pending] = {}
        #: dispatch token -> its miner, shared by every miner of the link (a data plane finds
        #: its dispatch in one lookup, however many miners are connected).
        self._tokens: dict[str, MinerConnection] = {} if tokens is None else tokens
        #: dispatch token -> the usage the miner reports for it: dispatches cancelled for
        #: their caller, until the miner reports what they used.
        self._cancelled: dict[str, asyncio.Future[Usage]] = {}
        #: nonce -> the future its Ack resolves (assignments, drains).
        self._acks: dict[str, asyncio.Future[None]] = {}
        #: sequence numbers of assignments sent, for WorkSlots arithmetic.
        self._assigned: collections.deque[int] = collections.deque()
        #: Dispatches answered whose run has not ended yet (see _Pending.answered).
        self._answered = 0
        #: When this node last read a message of the miner's (any stream of it).
        self.heard = time.monotonic()
        self._on_slots = on_slots
        self._on_given_up = on_given_up
        self.closed = asyncio.Event()
        self.close_reason = ""

    def next_nonce(self) -> str:
        """A fresh nonce for the next node message: ``<connection>-<sequence number>``."""
        return f"{self._prefix}-{next(self._nonces)}"

    def _seq(self, nonce: str) -> int | None:
        prefix, _, seq = nonce.rpartition("-")
        return int(seq) if prefix == self._prefix and seq.isdigit() else None

    def _on_work_slots(self, response_nonce: str, free: int) -> None:
        """``free`` slots counting assignments up to ``response_nonce``: subtract the ones
        sent after it, and tell the broker how many more fit now."""
        seen = self._seq(response_nonce) or 0
        while self._assigned and self._assigned[0] <= seen:
            self._assigned.popleft()
        # The broker still counts the answered units whose run has not ended, which the
        # miner has freed already: their release adds them back (counting them now as free
        # too gave one slot more than the miner had per such unit, and a NACK).
        self._on_slots(max(0, free - len(self._assigned) - self._answered))

    async def send(self, message: pb.ConnectResponse) -> None:
        """Writes one message; writes are serialized."""
        await self._writer.send(message)

    def _cancel(self, pending: _Pending, reason: str, unit: WorkUnit | None = None) -> None:
        """Tells the miner to stop a dispatch (best effort, in the background). With ``unit``
        (its caller went away or its deadline passed), the miner's answer, a WorkCompletion
        with the usage up to the cancel, is awaited in ``unit.cancelled``."""
        if self.closed.is_set():
            return
        if pending.ack.done() and not pending.ack.exception():
            self._on_given_up()  # it may still run until the miner's next WorkSlots
        message = pb.ConnectResponse(
            nonce=self.next_nonce(),
            cancel=pb.WorkCancel(dispatch_token=pending.token, reason=reason),
        )
        if unit is not None:
            usage: asyncio.Future[Usage] = asyncio.get_running_loop().create_future()
            unit.cancelled = CancelReport(self.miner_id, usage)
            answered = pending.result
            if answered.done() and not answered.cancelled() and answered.exception() is None:
                # The whole answer came just before the cancel: the miner has nothing more
                # to report, and the work used what its completion said.
                usage.set_result(answered.result().usage)
            else:
                self._cancelled[pending.token] = usage
                usage.add_done_callback(lambda _: self._cancelled.pop(pending.token, None))
        if (exc := self._writer.post(message)) is not None:
            log_event(_log, "miner_send_failed", miner_id=self.miner_id, error=repr(exc))

    async def run(self, unit: WorkUnit) -> WorkResult:
        """Dispatches ``unit``, waits for the ack, then for the result under the lease."""
        if self.closed.is_set():
            raise MinerFailedError("miner disconnected")
        loop = asyncio.get_running_loop()
        pending = _Pending(
            self.next_nonce(),
            new_id("d"),
            loop.create_future(),
            loop.create_future(),
            request=unit.request,
            stream=unit.stream,
        )
        self._pending[pending.token] = pending
        self._tokens[pending.token] = self
        self._acks[pending.nonce] = pending.ack
        try:
            return await self._run(unit, pending)
        except asyncio.CancelledError:
            self._cancel(pending, "the caller went away", unit)
            raise
        except DeadlineExceededError:
            self._cancel(pending, "deadline exceeded", unit)
            raise
        finally:
            self._pending.pop(pending.token, None)
            self._tokens.pop(pending.token, None)
            self._acks.pop(pending.nonce, None)
            if pending.answered:
                self._answered -= 1

    async def _run(self, unit: WorkUnit, pending: _Pending) -> WorkResult:
        remaining = unit.remaining_s()
        if remaining <= 0:
            raise DeadlineExceededError("the deadline passed before dispatch")
        message = assignment(
            unit, timeout_s=remaining, lease_s=self._lease_s, dispatch_token=pending.token
        )
        # Counted as sent from now on: a WorkSlots read while the write is in progress (with
        # batching, while a whole batch is written) was sent before the miner saw it.
        if (seq := self._seq(pending.nonce)) is not None:
            self._assigned.append(seq)
        try:
            await self.send(pb.ConnectResponse(nonce=pending.nonce, assignment=message))
        except Exception as exc:  # any failure to write (e.g. grpc's ExecuteBatchError)
            raise MinerFailedError(f"cannot send to miner: {exc!r}") from exc
        await self._acked(unit, pending)
        pending.heard = time.monotonic()  # the lease runs from the ack
        while True:
            now = time.monotonic()
            lease_left = pending.heard + self._lease_s - now
            if lease_left <= 0:
                self._cancel(pending, "lease expired")
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

    async def _acked(self, unit: WorkUnit, pending: _Pending) -> None:
        """Waits for the assignment's ack: the miner is declared down when none came within
        the ack deadline (SPEC: 500 ms) and the node has no sign that the fault is its own.
        The deadline starts again when the node's own event loop was held up past it (a busy
        machine stalled the node, and the ack may be waiting unread), and, for one lease at
        most, when the node has read other messages of the miner's since the assignment went
        out (the miner's stream moves; this ack is queued behind them on a busy node)."""
        sent = time.monotonic()
        deadline = min(sent + self._ack_deadline_s, unit.deadline)
        extended_s = 0.0
        while True:
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    await asyncio.shield(pending.ack)
                return
            except TimeoutError:
                if unit.remaining_s() <= 0:
                    raise DeadlineExceededError("the deadline passed waiting for the ack") from None
                now = time.monotonic()
                if now - deadline > self._ack_deadline_s / 2:
                    log_event(_log, "ack_wait_restarted", miner_id=self.miner_id, why="stall")
                elif self.heard > sent and extended_s < self._lease_s:
                    extended_s += now - sent
                    log_event(_log, "ack_wait_restarted", miner_id=self.miner_id, why="busy")
                else:
                    raise MinerFailedError(
                        f"no ack within {self._ack_deadline_s * 1000:.0f} ms: miner declared down"
                    ) from None
                sent, deadline = now, min(now + self._ack_deadline_s, unit.deadline)

    async def drain(self, grace_s: float) -> None:
        """Asks the miner to finish its work within ``grace_s`` and leave (it Acks, then says
        Goodbye). Waits for the Ack, bounded by the ack deadline."""
        nonce = self.next_nonce()
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[nonce] = acked
        drain = pb.Drain(reason="node draining")
        drain.grace.FromMilliseconds(int(grace_s * 1000))
        try:
            # A miner leaving as the node stops: its stream may be gone before the Drain is
            # written (grpc raises its ExecuteBatchError), which must not stop the node's own
            # shutdown half-way.
            if (
                gone := await self._writer.send_quietly(
                    pb.ConnectResponse(nonce=nonce, drain=drain)
                )
            ) is not None:
                raise MinerFailedError(f"stream gone: {gone!r}")
            async with asyncio.timeout(self._ack_deadline_s):
                await acked
        except (TimeoutError, MinerRefusedError, MinerFailedError) as exc:
            log_event(_log, "drain_unacknowledged", miner_id=self.miner_id, error=repr(exc))
        finally:
            self._acks.pop(nonce, None)

    def _about(self, token: str, response_nonce: str) -> _Pending | None:
        """The dispatch a work message names, if it echoes that dispatch's nonce."""
        p = self._pending.get(token)
        if p is None or p.nonce != response_nonce:
            return None
        p.heard = time.monotonic()
        return p

    def on_message(self, message: pb.ConnectRequest) -> None:
        """Routes one miner message to what it answers."""
        self.heard = time.monotonic()
        kind = message.WhichOneof("kind")
        nonce = message.response_nonce
        if kind == "ack":
            acked = self._acks.get(nonce)
            if acked is not None and not acked.done():
                if message.HasField("error_detail"):
                    detail = message.error_detail
                    busy = detail.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                    _settle(acked, MinerRefusedError(f"NACK: {detail.message}", busy=busy))
                else:
                    acked.set_result(None)
        elif kind == "slots":
            self._on_work_slots(nonce, message.slots.free)
        elif kind == "progress":
            self._about(message.progress.dispatch_token, nonce)
        elif kind == "response":
            r = message.response
            p = self._about(r.dispatch_token, nonce)
            if p is None:
                if r.body_complete:  # finished as it was cancelled: it used all of it
                    self._cancelled_usage(r.dispatch_token, r.completion.usage)
                return
            self._on_response(p, r)
        elif kind == "response_body":
            p = self._about(message.response_body.dispatch_token, nonce)
            if p is not None:
                self._on_body(p, message.response_body.data)
        elif kind == "completion":
            token = message.completion.dispatch_token
            if self._cancelled_usage(token, message.completion.usage):
                return
            p = self._about(token, nonce)
            if p is not None:
                self._on_completion(p, message.completion)
        elif kind == "failure":
            cancelled = self._cancelled.get(message.failure.dispatch_token)
            if cancelled is not None:  # failed as it was cancelled: failed work is not billed
                _settle(cancelled, MinerFailedError("the unit failed as it was cancelled"))
            p = self._about(message.failure.dispatch_token, nonce)
            if p is not None:
                self._on_failure(p, message.failure)

    def dispatch(self, token: str) -> _Pending | None:
        """The dispatch in flight that ``token`` names (for its data plane)."""
        return self._pending.get(token)

    def on_exchange(self, p: _Pending, message: pb.ExchangeRequest) -> None:
        """Routes one message of ``p``'s data plane (the stream itself names the dispatch)."""
        p.heard = self.heard = time.monotonic()
        kind = message.WhichOneof("kind")
        if kind == "response":
            self._on_response(p, message.response)
        elif kind == "response_body":
            self._on_body(p, message.response_body.data)
        elif kind == "completion":
            self._on_completion(p, message.completion)
        elif kind == "failure":
            self._on_failure(p, message.failure)
        else:
            raise InvalidArgumentError(f"unexpected {kind} on a data plane")

    def _on_response(self, p: _Pending, r: pb.WorkResponse) -> None:
        if r.body_complete:
            self._answered_by(p)
            self._finish(p, result_from_parts(r.head, r.body, r.completion.usage))
        elif p.stream is not None and not r.body:
            # A streamed answer: the head goes to the caller now, the body as it comes on
            # the data plane (MinerLink.Exchange relays it to p.stream).
            p.head = r.head
            p.streaming = p.stream.started = True
            self._finish(p, result_from_parts(r.head, b"", resources_pb2.ResourceUsage()))
        else:
            p.head = r.head
            self._on_body(p, r.body)

    @staticmethod
    def _on_body(p: _Pending, data: bytes) -> None:
        p.size += len(data)
        if p.size > MAX_RESPONSE_BYTES:
            # Bounded: a miner cannot fill the node's memory (CallStream streams instead).
            p.chunks.clear()
            _settle(
                p.result,
                DServiceFailedError(f"the answer exceeds {MAX_RESPONSE_BYTES} bytes"),
            )
            return
        p.chunks.append(data)

    def _on_completion(self, p: _Pending, completion: pb.WorkCompletion) -> None:
        if p.head is not None and not p.result.done():
            body = b"".join(p.chunks)
            self._answered_by(p)
            self._finish(p, result_from_parts(p.head, body, completion.usage))

    def _answered_by(self, p: _Pending) -> None:
        """The miner's last word on ``p`` came: its slot there is free."""
        if not p.answered:
            p.answered = True
            self._answered += 1

    def _on_failure(self, p: _Pending, failure: pb.WorkFailure) -> None:
        self._answered_by(p)
        if not p.ack.done():
            p.ack.set_result(None)
        _settle(p.result, DServiceFailedError(failure.status.message))

    def _cancelled_usage(self, token: str, usage: resources_pb2.ResourceUsage) -> bool:
        """Gives the usage of a dispatch cancelled for its caller to whoever waits for it: the
        miner's answer to the WorkCancel, or the answer it had finished as the cancel crossed
        it. False when ``token`` names no such dispatch."""
        cancelled = self._cancelled.get(token)
        if cancelled is None:
            return False
        if not cancelled.done():
            cancelled.set_result(usage_from_proto(usage))
        return True

    @staticmethod
    def _finish(p: _Pending, result: WorkResult) -> None:
        if not p.ack.done():  # a result implies the ack
            p.ack.set_result(None)
        if not p.result.done():
            p.result.set_result(result)

    def fail_all(self, reason: str) -> None:
        """Fails every in-flight unit so the broker re-dispatches it."""
        self.closed.set()
        for p in self._pending.values():
            _settle(p.result, MinerFailedError(reason))
        for acked in self._acks.values():
            _settle(acked, MinerFailedError(reason))
        for usage in list(self._cancelled.values()):
            _settle(usage, MinerFailedError(reason))

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
    ) -> None:
        self._broker = broker
        self._central = central
        self._node_id = node_id
        self._ack_deadline_s = ack_deadline_s
        self._lease_s = lease_s
        self._miners: set[MinerConnection] = set()
        #: dispatch token -> the miner it went to (MinerConnection keeps it).
        self._by_token: dict[str, MinerConnection] = {}

    def ban(self, miner_id: str, reason: str) -> int:
        """Disconnects every connection of ``miner_id`` at once (Central refuses it from now
        on); returns how many were cut."""
        cut = [m for m in self._miners if m.miner_id == miner_id]
        for miner in cut:
            self._broker.remove_miner(miner)
            miner.close(f"banned: {reason}")
        log_event(_log, "miner_banned", logging.WARNING, miner_id=miner_id, connections=len(cut))
        return len(cut)

    async def drain(self, grace_s: float) -> None:
        """Stops giving work to every miner and asks each to finish within ``grace_s`` and
        leave; returns once they left or the grace (plus an ack deadline) passed."""
        miners = list(self._miners)
        for miner in miners:
            self._broker.set_free(miner, 0)
        await asyncio.gather(*(m.drain(grace_s) for m in miners))
        try:
            async with asyncio.timeout(grace_s + self._ack_deadline_s):
                await asyncio.gather(*(m.closed.wait() for m in miners))
        except TimeoutError:
            log_event(_log, "drain_timed_out", logging.WARNING, miners=len(self._miners))

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
            raise PermissionDeniedError("miner account has no tier", reason="MINER_WITHOUT_TIER")
        writer = StreamWriter(context.write)
        if BATCH in hello.features:
            writer.set_batch(_node_batch)
        miner = MinerConnection(
            writer,
            miner_id=hello.miner_id,
            tier=tier,
            owner_account_id=info.owner_account_id,
            dservices=frozenset(d.name for d in hello.dservices),
            capacity=max(1, min(hello.max_concurrent_work_units or 1, _MAX_CONCURRENCY)),
            ack_deadline_s=self._ack_deadline_s,
            lease_s=self._lease_s,
            tokens=self._by_token,
        )
        miner_ref = miner
        miner._on_slots = lambda free: self._broker.set_free(miner_ref, free)
        miner._on_given_up = lambda: self._broker.hold_slot(miner_ref)
        welcome = pb.Welcome(
            node_id=self._node_id,
            tier=int(miner.tier),  # type: ignore[arg-type]
            max_grade=int(info.max_grade),  # type: ignore[arg-type]
            connection_id=miner.connection_id,
            features=NODE_FEATURES,
        )
        welcome.ack_deadline.FromMilliseconds(int(self._ack_deadline_s * 1000))
        welcome.availability_interval.FromSeconds(10)
        await miner.send(pb.ConnectResponse(nonce=miner.next_nonce(), welcome=welcome))
        self._broker.body_limits.offered(miner, {d.name: d.max_body_bytes for d in hello.dservices})
        self._broker.add_miner(miner)
        self._miners.add(miner)
        reader = asyncio.create_task(self._read(context, miner))
        closed = asyncio.create_task(miner.closed.wait())
        try:
            await asyncio.wait({reader, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            closed.cancel()
            self._broker.remove_miner(miner)
            self._broker.body_limits.withdrawn(miner)
            self._miners.discard(miner)
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
            raise AbortedError(miner.close_reason, reason="MINER_DROPPED")

    def _dispatch(self, token: str) -> tuple[MinerConnection, _Pending] | None:
        miner = self._by_token.get(token)
        found = miner.dispatch(token) if miner is not None else None
        return None if miner is None or found is None else (miner, found)

    async def Exchange(  # type: ignore[override]  # noqa: N802
        self, request_iterator: Any, context: Context
    ) -> None:
        """Serves one dispatch's data plane: sends its request body (when it did not go
        inline), routes the miner's response messages to the dispatch. The dispatch token is
        the credential; a token that names no dispatch in flight is NOT_FOUND."""
        opened = await read_hello(context, "open", "ExchangeOpen")
        found = self._dispatch(opened.dispatch_token)
        if found is None:
            raise NotFoundError("no dispatch in flight has this token", reason="DISPATCH_UNKNOWN")
        miner, pending = found
        sender = asyncio.create_task(self._send_body(context, pending))
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                if not pending.streaming:
                    miner.on_exchange(pending, message)
                elif not await self._relay(pending, message):
                    return  # the caller has gone: ending the stream stops the miner

            await sender
        finally:
            sender.cancel()
            if pending.stream is not None and pending.streaming:
                # Ended before the answer did (the miner died, or broke the protocol): the
                # caller's stream fails, never looks complete.
                pending.stream.fail(MinerFailedError("the miner was lost mid-answer"))

    @staticmethod
    async def _relay(pending: _Pending, message: pb.ExchangeRequest) -> bool:
        """One message of a streamed answer, after its head: a slice for the caller (waiting
        while the caller is behind: flow control reaches the miner), or its end. False once
        the caller has gone."""
        assert pending.stream is not None
        pending.heard = time.monotonic()
        kind = message.WhichOneof("kind")
        if kind == "response_body":
            return await pending.stream.put(message.response_body.data)
        if kind == "completion":
            await pending.stream.end(usage_from_proto(message.completion.usage))
            return True
        raise InvalidArgumentError(f"unexpected {kind} in a streamed answer")

    @staticmethod
    async def _send_body(context: Context, pending: _Pending) -> None:
        """The request body in BODY_CHUNK_BYTES slices, paced by gRPC flow control: from the
        request's spool when it came streamed (a re-dispatch reads it from the start again)."""
        request = pending.request
        if request is None or (request.spool is None and request.body_size <= INLINE_BODY_BYTES):
            return  # it went inline
        size = request.body_size
        sent = 0
        if not size:  # (an empty spool): the end alone
            chunk = pb.RequestBodyChunk(dispatch_token=pending.token, end_of_body=True)
            await context.write(pb.ExchangeResponse(request_body=chunk))
        async for data in _slices(request):
            sent += len(data)
            chunk = pb.RequestBodyChunk(
                dispatch_token=pending.token, data=data, end_of_body=sent >= size
            )
            await context.write(pb.ExchangeResponse(request_body=chunk))

    @staticmethod
    async def _read(context: Context, miner: MinerConnection) -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            batched = message.WhichOneof("kind") == "batch"
            for one in message.batch.messages if batched else (message,):
                kind = one.WhichOneof("kind")
                if batched and kind in ("batch", "hello"):  # the stream ends, saying why
                    miner.close(f"protocol violation: a {kind} inside a MinerBatch")
                    return
                if kind == "goodbye":
                    return
                miner.on_message(one)


def _node_batch(messages: list[pb.ConnectResponse]) -> pb.ConnectResponse:
    """Node messages written together, for a miner that reads batches."""
    return pb.ConnectResponse(batch=pb.NodeBatch(messages=messages))


async def _slices(request: HttpRequest) -> AsyncIterator[bytes]:
    """A request body in BODY_CHUNK_BYTES slices."""
    if request.spool is not None:
        async for data in request.spool.slices(BODY_CHUNK_BYTES):
            yield data
        return
    view = memoryview(request.body)
    for start in range(0, len(request.body), BODY_CHUNK_BYTES):
        yield bytes(view[start : start + BODY_CHUNK_BYTES])


def _loop_time(monotonic: float) -> float:
    """A ``time.monotonic()`` instant on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic - time.monotonic())
