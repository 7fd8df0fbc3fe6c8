"""The node's DApp-facing servicers: SessionService, WorkService, NodeStatusService."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeAlias

from cgn_common.certs import Role
from cgn_common.errors import (
    CgnError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from cgn_common.http import check_request
from cgn_common.ids import REQUEST_ID, new_id
from cgn_common.interceptors import current_caller
from cgn_common.logs import log_event
from cgn_common.streams import BODY_CHUNK_BYTES, INLINE_BODY_BYTES
from cgn_common.tasks import Supervisor
from cgn_common.types import Tier
from cgn_node._convert import request_from_call, response_head, usage_to_proto
from cgn_node.broker import Broker, MinerFailedError, Outcome
from cgn_node.central_client import CentralClient
from cgn_node.limits import Binding, body_limit, check_body_size, too_large
from cgn_node.recorder import FinishedWork, WorkRecorder
from cgn_node.sessions import SessionClaims, SessionInvalidError, SessionIssuer
from cgn_node.spool import Spool, SpoolBudget
from cgn_node.standing import SESSION_KINDS
from cgn_node.throttle import LoginThrottle
from cgn_node.work import CancelReport, ResponseBody, Usage, WorkUnit
from generated.cgn.common.v1 import http_pb2, types_pb2
from generated.cgn.node.v1 import status_service_pb2 as status_pb
from generated.cgn.node.v1 import status_service_pb2_grpc as status_grpc
from generated.cgn.work.v1 import session_service_pb2 as session_pb
from generated.cgn.work.v1 import session_service_pb2_grpc as session_grpc
from generated.cgn.work.v1 import work_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc

_log = logging.getLogger(__name__)

#: grpc ships no type stubs, so the servicer context is untyped.
Context: TypeAlias = Any

_DSERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


#: Metadata in which a gateway names the DApp's address; trusted only from a gateway's
#: certificate (anyone else's is ignored and the connection's own address is used).
CLIENT_ADDRESS_METADATA = "x-cgn-client-address"

#: How long an answer Call handed back streamed waits for its ReadAnswer before it is dropped
#: (and its work billed as abandoned).
ANSWER_CLAIM_S = 10.0

#: How long the row of abandoned work waits for the miner's usage up to the cancel (it comes
#: in milliseconds; longer means the miner is lost, and the row is written with a fee of 0).
CANCEL_REPORT_WAIT_S = 5.0


def client_address(context: Context) -> str:
    """The address a login comes from: the gateway's word for its DApp, else the peer's."""
    identity = current_caller().identity
    if identity is not None and identity.role is Role.GATEWAY:
        for key, value in context.invocation_metadata() or ():
            if key == CLIENT_ADDRESS_METADATA and isinstance(value, str) and value:
                return value[:64]
    peer: str = context.peer() or ""
    # "ipv4:127.0.0.1:5555" / "ipv6:[::1]:5555": the address without the port.
    return peer.split(":", 1)[-1].rsplit(":", 1)[0]


class Sessions(session_grpc.SessionServiceServicer):
    """Exchanges an API key (checked by Central) for a locally verifiable session token;
    failed logins are throttled before they cost Central an Argon2 check."""

    def __init__(
        self, issuer: SessionIssuer, central: CentralClient, throttle: LoginThrottle | None = None
    ) -> None:
        self._issuer = issuer
        self._central = central
        self._throttle = throttle or LoginThrottle()

    async def CreateSession(  # noqa: N802
        self, request: session_pb.CreateSessionRequest, context: Context
    ) -> session_pb.CreateSessionResponse:
        if not request.account_id or not request.api_key:
            raise InvalidArgumentError("account_id and api_key are required")
        address = client_address(context)
        self._throttle.begin(request.account_id, address)
        try:
            account = await self._central.verify_credential(
                request.account_id, request.api_key, SESSION_KINDS
            )
        except UnauthenticatedError:
            self._throttle.failed(request.account_id, address)
            raise
        except BaseException:
            self._throttle.abandoned(request.account_id, address)
            raise
        self._throttle.succeeded(request.account_id, address)
        token, claims = self._issuer.issue(
            account.account_id, account.allowed_tiers, account.session_epoch, account.max_body_bytes
        )
        response = session_pb.CreateSessionResponse(
            token=token,
            allowed_tiers=[int(t) for t in claims.allowed_tiers],  # type: ignore[misc]
        )
        response.expires_at.FromDatetime(datetime.fromtimestamp(claims.expires_at, UTC))
        return response

    async def RevokeSession(  # noqa: N802
        self, request: session_pb.RevokeSessionRequest, context: Context
    ) -> session_pb.RevokeSessionResponse:
        """Revokes the caller's own session on every node: Central records it and announces
        it; only then is it refused here too (so a retry after an error can finish it)."""
        try:
            claims = self._issuer.verify(request.token)
        except SessionInvalidError:
            return session_pb.RevokeSessionResponse(revoked=False)
        await self._central.revoke_session(claims.account_id, claims.session_id, claims.expires_at)
        self._issuer.revocations.session_revoked(claims.session_id, claims.expires_at)
        log_event(_log, "session_revoked", account_id=claims.account_id)
        return session_pb.RevokeSessionResponse(revoked=True)


class Work(work_grpc.WorkServiceServicer):
    """Runs DApp requests through the broker and records each finished unit.

    The unit's deadline is the call's gRPC deadline, capped by ``max_timeout_s``; a caller
    that goes away cancels the call, and with it the work on the miner.
    """

    def __init__(
        self,
        broker: Broker,
        recorder: WorkRecorder,
        node_id: str,
        supervisor: Supervisor,
        max_timeout_s: float = 60.0,
        *,
        max_body_bytes: int = 32 * 1024 * 1024,
        max_stream_body_bytes: int = 2 * 1024**3,
        spool_dir: str | None = None,
        max_spool_bytes: int = 8 * 1024**3,
    ) -> None:
        self._broker = broker
        self._max_body_bytes = max_body_bytes
        self._max_stream_body_bytes = max_stream_body_bytes
        self._spool_dir = spool_dir
        self._spool_budget = SpoolBudget(max_spool_bytes)
        self._recorder = recorder
        self._node_id = node_id
        self._supervisor = supervisor
        self._max_timeout_s = max_timeout_s
        #: Answers Call handed back streamed, waiting for their ReadAnswer, by token.
        self._held: dict[str, _HeldAnswer] = {}
        #: Rows being built (pricing, pseudonyms) and queued; awaited before the ledger closes.
        self.recording: set[asyncio.Task[None]] = set()

    async def Call(  # noqa: N802
        self, request: work_pb.CallRequest, context: Context
    ) -> work_pb.CallResponse:
        started = time.perf_counter_ns()
        stream = ResponseBody() if request.options.stream_answers else None
        unit = self._new_unit(request, context, stream)
        outcome = await self._submit(unit, started)
        result = outcome.result
        if stream is not None and stream.started:  # the rest comes through ReadAnswer
            head = response_head(result, streamed=True)
            token = self._hold(_HeldAnswer(unit, outcome, stream, started))
            return work_pb.CallResponse(head=head, answer_token=token)
        finished = self._finished(unit, outcome, started, result.usage)

        def ended(ended_context: Context) -> None:
            # Recorded once the call is over, off its critical path: delivered when the answer
            # went out, abandoned when the caller left first (SPEC 15, Work: billing).
            outcome = "abandoned" if ended_context.cancelled() else "delivered"
            self._record(replace(finished, outcome=outcome))

        context.add_done_callback(ended)
        return work_pb.CallResponse(
            head=response_head(result),
            body=result.body,
            receipt=self._receipt(unit, outcome, finished, result.usage),
        )

    async def ReadAnswer(  # noqa: N802
        self, request: work_pb.ReadAnswerRequest, context: Context
    ) -> AsyncIterator[work_pb.ReadAnswerResponse]:
        """The body and receipt of an answer Call handed back streamed; the token is good
        once, and only for the account that made the call."""
        claims: SessionClaims = current_caller().session
        held = self._held.get(request.answer_token)
        if held is None or held.unit.account_id != claims.account_id:
            raise NotFoundError("no answer waits under this token", reason="ANSWER_UNKNOWN")
        del self._held[request.answer_token]
        if held.timer is not None:
            held.timer.cancel()
        async for part in self._answer(held):
            if isinstance(part, bytes):
                yield work_pb.ReadAnswerResponse(body=http_pb2.BodyChunk(data=part))
            else:
                yield work_pb.ReadAnswerResponse(receipt=part)

    def _hold(self, held: _HeldAnswer) -> str:
        """Keeps a streamed answer for its ReadAnswer (ANSWER_CLAIM_S at most)."""
        token = secrets.token_urlsafe(18)
        held.timer = asyncio.get_running_loop().call_later(ANSWER_CLAIM_S, self._unclaimed, token)
        self._held[token] = held
        return token

    def _unclaimed(self, token: str) -> None:
        """A held answer nobody read: the miner is stopped, the work billed as abandoned."""
        held = self._held.pop(token, None)
        if held is None:
            return
        held.stream.close()
        log_event(_log, "answer_unclaimed", logging.WARNING, request_id=held.unit.request_id)
        usage = held.stream.usage or held.outcome.result.usage
        finished = self._finished(held.unit, held.outcome, held.started, usage)
        self._record(replace(finished, outcome="abandoned"))

    async def CallStream(  # noqa: N802
        self, request_iterator: AsyncIterator[work_pb.CallStreamRequest], context: Context
    ) -> AsyncIterator[work_pb.CallStreamResponse]:
        """One request, its body streamed in and its answer streamed out.

        The start is checked first (session, DService, head, and the body limit against
        ``head.content_length``), and answered ``accepted`` when the caller asked to wait for
        it. The body is then spooled (memory, then disk: cgn_node/spool.py) up to the
        limit, and the unit dispatched with it: a re-dispatch sends it again from the spool.
        The answer's head goes out as soon as the DService sent it, then its body slice by
        slice as the miner relays it (a caller reading slowly slows the miner: flow control
        end to end), then the receipt."""
        started = time.perf_counter_ns()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "start":
            raise InvalidArgumentError("a CallStream starts with a CallStart")
        start = first.start
        head = start.head
        declared = head.content_length if head.HasField("content_length") else None
        probe = work_pb.CallRequest(dservice=start.dservice, head=head, options=start.options)
        stream = ResponseBody()
        unit = self._new_unit(probe, context, stream, body_size=declared or 0)
        claims: SessionClaims = current_caller().session
        dservice_limit = self._broker.body_limits.limit(start.dservice)
        limit, binding = body_limit(self._max_stream_body_bytes, claims, dservice_limit)
        if start.await_accept:
            yield work_pb.CallStreamResponse(accepted=work_pb.CallAccepted(max_body_bytes=limit))
        spool = Spool(self._spool_budget, directory=self._spool_dir)
        try:
            ended = await self._spool_body(request_iterator, spool, limit, binding, start.dservice)
            if declared is not None and spool.size != declared:
                raise InvalidArgumentError(
                    f"the body has {spool.size} bytes, not the {declared} its head declares"
                )
            if not ended and declared is None and spool.size:
                # A stream that stops without end_of_body may be a caller that cancelled
                # (grpc.aio ends the reads before the cancel arrives): never dispatch a body
                # that may be cut. (No chunk at all is a request without a body, a GET.)
                raise InvalidArgumentError(
                    "the body's stream ended without end_of_body and its head declares no "
                    "content_length: it may be cut, so it is not run"
                )
            # The work's deadline runs from its dispatch: the upload did not count.
            unit.deadline = time.monotonic() + self._timeout_s(start.options, context)
            if spool.size <= INLINE_BODY_BYTES:  # small: it travels inline, as a Call's would
                unit.request = replace(unit.request, body=spool.contents())
            else:
                unit.request = replace(unit.request, spool=spool)
            outcome = await self._submit(unit, started)
            answer_head = response_head(outcome.result, streamed=stream.started)
            yield work_pb.CallStreamResponse(head=answer_head)
            async for part in self._answer(_HeldAnswer(unit, outcome, stream, started)):
                if isinstance(part, bytes):
                    yield work_pb.CallStreamResponse(body=http_pb2.BodyChunk(data=part))
                else:
                    yield work_pb.CallStreamResponse(receipt=part)
        finally:
            stream.close()
            spool.close()

    async def _answer(self, held: _HeldAnswer) -> AsyncIterator[bytes | work_pb2.WorkReceipt]:
        """An answer's body slices, then its receipt; the unit is recorded however it ends:
        delivered once the receipt went out, failed when the miner was lost mid-answer
        (ANSWER_CUT: never re-dispatched after the first byte, SPEC 15), abandoned when the
        caller left first."""
        unit, outcome, stream, started = held.unit, held.outcome, held.stream, held.started
        result = outcome.result
        usage = result.usage
        state = "abandoned"  # until the receipt went out
        finished: FinishedWork | None = None
        try:
            if stream.started:
                try:
                    async for piece in stream.slices():
                        yield piece
                except MinerFailedError as exc:
                    state = "failed"
                    raise UnavailableError(
                        f"the answer was cut: {exc}", reason="ANSWER_CUT"
                    ) from exc
                usage = stream.usage or usage
            else:
                view = memoryview(result.body)
                for at in range(0, len(result.body), BODY_CHUNK_BYTES):
                    yield bytes(view[at : at + BODY_CHUNK_BYTES])
            finished = self._finished(unit, outcome, started, usage)
            yield self._receipt(unit, outcome, finished, usage)
            state = "delivered"
        finally:
            stream.close()  # a caller gone mid-answer: the relay stops, and with it the miner
            if finished is None:  # cut or abandoned before the receipt
                finished = self._finished(unit, outcome, started, usage)
            self._record(replace(finished, outcome=state))

    def _check_body_size(
        self, size: int, claims: SessionClaims, dservice: str, *, streamed: bool
    ) -> None:
        """BODY_TOO_LARGE for a body over the node's (unary or streamed), the account's or
        the DService's limit, whichever is smallest (cgn_node/limits.py)."""
        node_max = self._max_stream_body_bytes if streamed else self._max_body_bytes
        dservice_limit = self._broker.body_limits.limit(dservice)
        check_body_size(size, node_max, claims, dservice, dservice_limit)

    @staticmethod
    async def _spool_body(
        parts: AsyncIterator[work_pb.CallStreamRequest],
        spool: Spool,
        limit: int,
        binding: Binding,
        dservice: str,
    ) -> bool:
        """A CallStream's request body into ``spool``: its BodyChunks until end_of_body (or
        the end of the stream), cut with BODY_TOO_LARGE as soon as it passes ``limit``
        (``binding``'s). True when end_of_body came."""
        async for part in parts:
            if part.WhichOneof("kind") != "body":
                raise InvalidArgumentError("after its CallStart, a CallStream sends BodyChunks")
            data = part.body.data
            if spool.size + len(data) > limit:
                raise too_large(spool.size + len(data), limit, binding, dservice)
            await spool.write(data)
            if part.body.end_of_body:
                return True
        return False

    def _new_unit(
        self,
        request: work_pb.CallRequest,
        context: Context,
        stream: ResponseBody | None,
        body_size: int | None = None,
    ) -> WorkUnit:
        """The work unit of a checked request (INVALID_ARGUMENT for what no DService may
        receive or no tier may run)."""
        claims: SessionClaims = current_caller().session  # verified by the interceptor
        if not _DSERVICE_NAME.match(request.dservice):
            raise InvalidArgumentError(f"invalid DService name {request.dservice!r}")
        head = request.head
        # The node's, the account's and the DService's body limits: BODY_TOO_LARGE.
        size = len(request.body) if body_size is None else body_size
        self._check_body_size(size, claims, request.dservice, streamed=body_size is not None)
        # Before any DService sees it: what the gateway checks, for callers that skip it.
        check_request(
            head.method,
            head.path,
            head.query,
            [(h.name, h.value) for h in head.headers],
            len(request.body) if body_size is None else body_size,
            self._max_body_bytes if body_size is None else self._max_stream_body_bytes,
        )
        options = request.options
        if options.request_id and not REQUEST_ID.match(options.request_id):
            raise InvalidArgumentError("request_id: 1-128 of A-Z a-z 0-9 . _ -")
        tiers = claims.allowed_tiers
        if options.preferred_tiers:
            preferred = {int(t) for t in options.preferred_tiers}
            tiers = tuple(t for t in tiers if int(t) in preferred)
        if options.sensitive:
            tiers = tuple(t for t in tiers if t <= Tier.TIER_2_DATACENTER)
        if not tiers:
            raise InvalidArgumentError(
                "no tier is left to run this request: the account's allowed tiers, "
                "preferred_tiers and sensitive exclude every tier"
            )
        work_id = new_id("work")
        return WorkUnit(
            work_id=work_id,
            dservice=request.dservice,
            account_id=claims.account_id,
            allowed_tiers=tiers,
            request=request_from_call(request),
            request_id=options.request_id or work_id,
            affinity_key=options.affinity_key,
            deadline=time.monotonic() + self._timeout_s(options, context),
            stream=stream,
        )

    def _timeout_s(self, options: work_pb2.WorkOptions, context: Context) -> float:
        """How long the work may take from now: the caller's ``options.timeout``, else its
        gRPC deadline, capped by ``max_timeout_s``."""
        timeout_s = self._max_timeout_s
        if options.HasField("timeout"):
            timeout_s = min(timeout_s, options.timeout.ToMilliseconds() / 1000)
        remaining = context.time_remaining()
        return min(timeout_s, remaining if remaining is not None else math.inf)

    async def _submit(self, unit: WorkUnit, started: int) -> Outcome:
        """Runs ``unit``; one that reached a miner and got no answer is recorded here."""
        try:
            return await self._broker.submit(unit)
        except (asyncio.CancelledError, CgnError) as exc:
            if unit.attempts:  # it reached a miner: work was done, so it has a row
                abandoned = isinstance(exc, asyncio.CancelledError | DeadlineExceededError)
                self._record_unanswered(unit, started, "abandoned" if abandoned else "failed")
            raise

    @staticmethod
    def _finished(unit: WorkUnit, outcome: Outcome, started: int, usage: Usage) -> FinishedWork:
        return FinishedWork(
            work_id=unit.work_id,
            request_id=unit.request_id,
            account_id=unit.account_id,
            dservice=unit.dservice,
            miner_id=outcome.miner_id,
            tier=outcome.tier,
            status_code=outcome.result.status,
            attempts=outcome.attempts,
            total_time_us=(time.perf_counter_ns() - started) // 1000,
            execution_time_us=usage.wall_time_us,
            cpu_time_us=usage.cpu_time_us,
            bytes_in=usage.bytes_in,
            bytes_out=usage.bytes_out,
            method=unit.request.method,
            path=unit.request.path,
            query=unit.request.query,
            headers=unit.request.headers,
        )

    def _receipt(
        self, unit: WorkUnit, outcome: Outcome, finished: FinishedWork, usage: Usage
    ) -> work_pb2.WorkReceipt:
        receipt = work_pb2.WorkReceipt(
            work_id=unit.work_id,
            usage=usage_to_proto(usage),  # metering methods and peak memory included
            tier=int(outcome.tier),  # type: ignore[arg-type]
            attempts=outcome.attempts,
            node_id=self._node_id,
            request_id=unit.request_id,
        )
        receipt.total_time.FromMicroseconds(finished.total_time_us)
        receipt.execution_time.FromMicroseconds(finished.execution_time_us)
        receipt.network_latency.FromMicroseconds(finished.network_latency_us)
        return receipt

    def _record_unanswered(self, unit: WorkUnit, started: int, outcome: str) -> None:
        """Records a unit that reached a miner but got no answer to return: failed (not
        billed), or abandoned by its caller or its deadline (billed for the usage the miner
        reports up to the cancel, awaited off the call's path; docs/ledger.md)."""
        finished = FinishedWork(
            work_id=unit.work_id,
            request_id=unit.request_id,
            account_id=unit.account_id,
            dservice=unit.dservice,
            miner_id="",
            tier=unit.allowed_tiers[0],
            status_code=0,
            attempts=unit.attempts,
            total_time_us=(time.perf_counter_ns() - started) // 1000,
            execution_time_us=0,
            cpu_time_us=0,
            bytes_in=0,
            bytes_out=0,
            method=unit.request.method,
            path=unit.request.path,
            query=unit.request.query,
            headers=unit.request.headers,
            outcome=outcome,
        )
        if outcome == "abandoned" and unit.cancelled is not None:
            self._track(
                self._supervisor.spawn(
                    "record-abandoned", self._record_abandoned(finished, unit.cancelled)
                )
            )
        else:
            self._record(finished)

    async def _record_abandoned(self, finished: FinishedWork, report: CancelReport) -> None:
        """Records abandoned work once its miner reported the usage up to the cancel; with a
        fee of 0 when no report comes within CANCEL_REPORT_WAIT_S (the miner was lost)."""
        try:
            usage = await asyncio.wait_for(report.usage, CANCEL_REPORT_WAIT_S)
        except (TimeoutError, MinerFailedError) as exc:
            log_event(
                _log,
                "abandoned_usage_unreported",
                logging.WARNING,
                request_id=finished.request_id,
                miner_id=report.miner_id,
                error=repr(exc),
            )
            await self._recorder.record(finished)
            return
        await self._recorder.record(
            replace(
                finished,
                miner_id=report.miner_id,
                execution_time_us=usage.wall_time_us,
                cpu_time_us=usage.cpu_time_us,
                bytes_in=usage.bytes_in,
                bytes_out=usage.bytes_out,
            )
        )

    def _record(self, finished: FinishedWork) -> None:
        self._track(self._supervisor.spawn("record-work", self._recorder.record(finished)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self.recording.add(task)
        task.add_done_callback(self.recording.discard)

    async def finish_recording(self, timeout_s: float = 10.0) -> None:
        """Waits (bounded) for the rows of calls that have ended to be queued."""
        if self.recording:
            await asyncio.wait(set(self.recording), timeout=timeout_s)


@dataclass(eq=False)
class _HeldAnswer:
    """A unit whose answer streams: what its body's reader needs."""

    unit: WorkUnit
    outcome: Outcome
    stream: ResponseBody
    started: int
    timer: asyncio.TimerHandle | None = None


class Status(status_grpc.NodeStatusServiceServicer):
    """Reports queues, miner pools and the central link."""

    def __init__(self, broker: Broker, node_id: str, region: str, central: Any) -> None:
        self._broker = broker
        self._node_id = node_id
        self._region = region
        self._central = central
        self._started = time.monotonic()

    async def GetStatus(  # noqa: N802
        self, request: status_pb.GetStatusRequest, context: Context
    ) -> status_pb.GetStatusResponse:
        depths = self._broker.queue_depths()
        overloaded = any(w >= self._broker.danger_threshold for w, _ in depths.values())
        status = status_pb.NodeStatus(
            node_id=self._node_id,
            location=types_pb2.GeoLocation(region=self._region),
            health=(
                types_pb2.HEALTH_STATE_OVERLOADED if overloaded else types_pb2.HEALTH_STATE_SERVING
            ),
            version="0.1.0",
            central_connected=self._central.connected,
            queues=[
                status_pb.QueueStatus(
                    dservice=name,
                    depth=waiting,
                    in_flight=in_flight,
                    danger_threshold=self._broker.danger_threshold,
                )
                for name, (waiting, in_flight) in depths.items()
            ],
            miner_pools=[
                status_pb.MinerPoolStatus(
                    tier=int(tier),  # type: ignore[arg-type]
                    dservice=name,
                    connected=connected,
                    idle=idle,
                )
                for (tier, name), (connected, idle) in sorted(self._broker.pools().items())
            ],
        )
        status.uptime.FromNanoseconds(int((time.monotonic() - self._started) * 1e9))
        status.observed_at.GetCurrentTime()
        return status_pb.GetStatusResponse(status=status)
