"""The miner's side of the miner link: hello, then ack and run each assignment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc

from cgn_common.errors import (
    BodyTooLargeError,
    CgnError,
    DeadlineExceededError,
    DServiceFailedError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
    UnimplementedError,
)
from cgn_common.logs import log_event
from cgn_common.rpc import status_proto
from cgn_common.streams import BODY_CHUNK_BYTES, INLINE_BODY_BYTES, STREAM_GONE, StreamWriter
from generated.cgn.common.v1 import dservice_pb2, http_pb2, resources_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc
from miner.config import MinerConfig
from miner.fitness import FitnessResult
from miner.runtime import DServiceAnswer, RequestBody, Runtime, Spent, StreamedBody

_log = logging.getLogger(__name__)

#: The largest request body a miner takes (2 GiB, SPEC 4, as MAX_RESPONSE_BYTES). It is not
#: held: it streams from the data plane into the DService a slice at a time, so the limit
#: bounds no memory, only what one unit may carry; a larger announced size is refused before
#: any of it is read.
MAX_REQUEST_BYTES = 2 * 1024 * 1024 * 1024
#: How long after a unit's timeout the miner stops it itself, failing it, if the node has
#: not cancelled it by then.
DEADLINE_GRACE_S = 1.0

#: The optional protocol features this miner supports (docs/miner-protocol.md, "Features").
FEATURES = ("batch",)
#: With the node's "answer_acks", how much of the ack deadline the miner may hold an Ack back
#: hoping the answer comes first (which then acknowledges the assignment, one message fewer).
ACK_HOLD_SHARE = 0.1

#: Request headers the miner sets itself; a DApp's copies are dropped.
_OURS = frozenset({"x-cgn-attempt", "x-request-id"})


class _Exchange:
    """A dispatch's data plane (``MinerLinkService.Exchange``), opened by the miner: the
    request body comes on it, the answer goes on it; ``close`` ends it either way."""

    def __init__(self, call: Any, token: str) -> None:
        self._call = call
        self._token = token
        #: A read whose reader was cancelled, for the next reader to take (see _read).
        self._pending: asyncio.Future[Any] | None = None

    @classmethod
    async def open(cls, stub: pb_grpc.MinerLinkServiceStub, token: str) -> _Exchange:
        """Opens the data plane of the dispatch ``token``."""
        call: Any = stub.Exchange()
        await call.write(pb.ExchangeRequest(open=pb.ExchangeOpen(dispatch_token=token)))
        return cls(call, token)

    async def _read(self) -> Any:
        """The node's next message. A reader cancelled mid-read (the request body's sender,
        when the DService answered before reading it all) leaves the read running for the
        next reader: grpc.aio cancels the whole call when a read is interrupted, and the
        answer still has to go out on it."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._call.read())
        message = await asyncio.shield(self._pending)
        self._pending = None
        return message

    def request_body(self, size: int) -> StreamedBody:
        """The request body the node sends, read as the DService takes it (a slice at a
        time: the miner holds about one). It must be ``size`` bytes: more, or an
        ``end_of_body`` before them, is INVALID_ARGUMENT; a data plane that ends before
        ``end_of_body`` is UNAVAILABLE; either fails the call to the DService."""
        if size > MAX_REQUEST_BYTES:
            raise InvalidArgumentError(f"a {size}-byte body exceeds {MAX_REQUEST_BYTES}")
        return StreamedBody(size, self._body_slices(size))

    async def _body_slices(self, size: int) -> AsyncGenerator[bytes, None]:
        received = 0
        while True:
            message = await self._read()
            if message is grpc.aio.EOF:
                raise UnavailableError("the node ended the data plane before the body did")
            data = message.request_body.data
            received += len(data)
            if received > size:
                raise InvalidArgumentError(f"the body exceeds its announced {size} bytes")
            if data:
                yield data
            if message.request_body.end_of_body:
                break
        if received != size:
            raise InvalidArgumentError(f"the body has {received} bytes, not {size}")

    async def send_head(self, head: http_pb2.HttpResponseHead) -> None:
        """Sends the answer's head (its body follows)."""
        response = pb.WorkResponse(dispatch_token=self._token, head=head, body_complete=False)
        await self._call.write(pb.ExchangeRequest(response=response))

    async def send_body(self, data: bytes) -> None:
        """Sends a part of the answer's body, in BODY_CHUNK_BYTES slices, each write paced by
        gRPC flow control."""
        view = memoryview(data)
        for start in range(0, len(data), BODY_CHUNK_BYTES):
            chunk = pb.ResponseBodyChunk(
                dispatch_token=self._token, data=bytes(view[start : start + BODY_CHUNK_BYTES])
            )
            await self._call.write(pb.ExchangeRequest(response_body=chunk))

    async def finish(self, completion: pb.WorkCompletion) -> None:
        """Ends the answer with its completion, then waits for the node to end the stream."""
        await self._call.write(pb.ExchangeRequest(completion=completion))
        await self._call.done_writing()
        while await self._read() is not grpc.aio.EOF:
            pass  # the rest of a request body the DService did not read

    def close(self) -> None:
        """Ends the stream (nothing if it ended already)."""
        pending = self._pending
        if pending is not None:
            if not pending.done():
                pending.cancel()
            elif not pending.cancelled():
                pending.exception()  # the unit's outcome is decided: a late failure is moot
        self._call.cancel()


class _Heartbeat:
    """Renews a unit's lease while it runs: a WorkProgress every third of a lease, with the
    wall time used so far (a unit's CPU share is known only at its end). A timer, not a task:
    most units end before the first beat."""

    __slots__ = ("_handle", "_loop", "_nonce", "_period", "_post", "_started", "_token")

    def __init__(
        self, post: Callable[[pb.ConnectRequest], None], nonce: str, token: str, lease_s: float
    ) -> None:
        self._post = post
        self._nonce = nonce
        self._token = token
        self._period = lease_s / 3
        self._loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self._handle = self._loop.call_later(self._period, self._beat)

    def _beat(self) -> None:
        progress = pb.WorkProgress(dispatch_token=self._token)
        progress.usage_so_far.wall_time.FromMicroseconds(
            int((time.monotonic() - self._started) * 1_000_000)
        )
        self._post(pb.ConnectRequest(response_nonce=self._nonce, progress=progress))
        self._handle = self._loop.call_later(self._period, self._beat)

    def cancel(self) -> None:
        """The unit ended: no more beats."""
        self._handle.cancel()


class LinkSession:
    """One connection to a node; ``run`` returns when the stream ends."""

    def __init__(self, config: MinerConfig, runtime: Runtime, fitness: FitnessResult) -> None:
        self._config = config
        self._runtime = runtime
        self._fitness = fitness
        #: dispatch token -> the task running it.
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: dispatch token -> what its call to the DService used (filled when the call ends).
        self._spent: dict[str, Spent] = {}
        #: dispatch token -> its Ack, held back until the answer comes or the hold ends.
        self._held_acks: dict[str, asyncio.TimerHandle] = {}
        #: How long an Ack may be held back (0: never, the node did not offer answer_acks).
        self._ack_hold_s = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._writer: StreamWriter | None = None
        self._data_stub: pb_grpc.MinerLinkServiceStub | None = None
        self._last_nonce = ""
        self._draining = False
        self._drained = asyncio.Event()
        self.welcome: pb.Welcome | None = None
        self.completed = 0
        self.failed = 0

    @property
    def drained(self) -> bool:
        """True when the session ended because the node drained this miner."""
        return self._drained.is_set()

    def _hello(self) -> pb.MinerHello:
        f = self._fitness
        fitness = resources_pb2.Fitness(
            cpu_kmips=f.cpu_kmips, cpu_threads=f.cpu_threads, memory_bytes=f.memory_bytes
        )
        fitness.test_duration.FromMicroseconds(f.duration_us)
        return pb.MinerHello(
            miner_id=self._config.miner_id,
            api_key=self._config.miner_key.reveal(),
            fitness=fitness,
            dservices=[
                dservice_pb2.DServiceOffer(
                    name=n, version=d.version, max_body_bytes=d.max_body_bytes
                )
                for n, d in self._runtime.dservices.items()
            ],
            software_version="0.1.0",
            max_concurrent_work_units=self._config.max_concurrent_work_units,
            runtime=self._config.runtime,
            features=FEATURES,
        )

    def _post(self, message: pb.ConnectRequest) -> None:
        """Queues a message for the node (written in order, with others of the same moment
        when the node reads batches); a failure is only logged: the stream is gone and the
        node knows it."""
        assert self._writer is not None
        if (exc := self._writer.post(message)) is not None:
            log_event(_log, "miner_send_failed", logging.WARNING, error=repr(exc))

    async def run(
        self,
        channel: grpc.aio.Channel,
        connected: asyncio.Event,
        data_channel: grpc.aio.Channel | None = None,
    ) -> None:
        """Says hello and serves node messages until the stream ends or a drain finishes.
        Data planes (``Exchange``) go on ``data_channel`` when given."""
        self._data_stub = pb_grpc.MinerLinkServiceStub(data_channel or channel)
        call: Any = pb_grpc.MinerLinkServiceStub(channel).Connect()
        await call.write(pb.ConnectRequest(hello=self._hello()))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
            await call  # raises the node's refusal status
            return
        self.welcome = first.welcome
        self._writer = StreamWriter(call.write)
        if "batch" in first.welcome.features:
            self._writer.set_batch(_miner_batch)
        if "answer_acks" in first.welcome.features:
            self._ack_hold_s = first.welcome.ack_deadline.ToMilliseconds() / 1000 * ACK_HOLD_SHARE
        self._last_nonce = first.nonce
        connected.set()
        log_event(
            _log,
            "miner_connected",
            node_id=first.welcome.node_id,
            tier=first.welcome.tier,
            connection_id=first.welcome.connection_id,
        )
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                batch = message.batch.messages if message.WhichOneof("kind") == "batch" else ()
                for one in batch or (message,):
                    self._last_nonce = one.nonce
                    self._on_message(call, one)
                if self._drained.is_set():
                    return
        finally:
            connected.clear()
            for held in self._held_acks.values():
                held.cancel()
            for task in list(self._tasks.values()):
                task.cancel()

    def _on_message(self, call: Any, message: pb.ConnectResponse) -> None:
        kind = message.WhichOneof("kind")
        nonce = message.nonce
        if kind == "assignment":
            nack = self._nack_reason(message.assignment)
            if nack is not None:
                self._ack(nonce, nack)
                return
            token = message.assignment.dispatch_token
            if self._ack_hold_s:  # the answer may come first and acknowledge it
                self._held_acks[token] = asyncio.get_running_loop().call_later(
                    self._ack_hold_s, self._release_ack, token, nonce
                )
            else:
                self._ack(nonce, None)
            self._start_work(nonce, message.assignment)
        elif kind == "cancel":
            token = message.cancel.dispatch_token
            cancelled = self._tasks.get(token)
            spent = self._spent.get(token)
            if cancelled is not None and spent is not None:
                cancelled.cancel()
                self._spawn(self._report_cancelled(nonce, token, cancelled, spent))
        elif kind == "ping":
            self._post(pb.ConnectRequest(response_nonce=nonce, pong=pb.Pong()))
        elif kind == "drain":
            self._ack(nonce, None)
            grace_s = message.drain.grace.ToMilliseconds() / 1000
            self._draining = True
            self._spawn(self._drain(call, grace_s))
        elif kind in ("key_revoke",):
            self._ack(nonce, None)
        elif kind in ("key_grant", "dservice_update", "attestation_challenge"):
            self._ack(nonce, UnimplementedError(f"{kind} is not supported yet"))

    def _ack(self, nonce: str, nack: CgnError | None) -> None:
        """An Ack of the node message ``nonce``; with ``nack``, a NACK saying why."""
        message = pb.ConnectRequest(response_nonce=nonce, ack=pb.Ack())
        if nack is not None:
            message.error_detail.CopyFrom(status_proto(nack))
        self._post(message)

    def _release_ack(self, token: str, nonce: str) -> None:
        """The held Ack of dispatch ``token`` goes now: its answer did not come in time."""
        if self._held_acks.pop(token, None) is not None:
            self._ack(nonce, None)

    def _answer(self, token: str, message: pb.ConnectRequest) -> None:
        """Sends the unit's answer or failure on the control stream, with the WorkSlots its
        end frees (together when the node reads batches); an Ack still held back is not
        needed any more: the answer acknowledges the assignment."""
        self._post(message)
        self._ended(token)

    def _ended(self, token: str) -> None:
        """The unit ``token`` is over (answered, failed, cancelled or crashed): its held Ack
        is dropped, and its slot freed, the node told how many are free."""
        held = self._held_acks.pop(token, None)
        if held is not None:
            held.cancel()
        if self._tasks.pop(token, None) is None:
            return  # ended already
        self._spent.pop(token, None)
        if not self._drained.is_set():
            free = max(0, self._config.max_concurrent_work_units - len(self._tasks))
            self._post(
                pb.ConnectRequest(response_nonce=self._last_nonce, slots=pb.WorkSlots(free=free))
            )

    def _nack_reason(self, assignment: pb.WorkAssignment) -> CgnError | None:
        """Why this miner rejects the assignment (the node sends it elsewhere), or None."""
        if not assignment.dispatch_token or not assignment.head.path.startswith("/"):
            return InvalidArgumentError("assignment without dispatch_token or path")
        if self._draining:
            return UnavailableError("draining")
        if len(self._tasks) >= self._config.max_concurrent_work_units:
            return ResourceExhaustedError("no free slot")
        try:
            dservice = self._runtime.get(assignment.dservice)
        except CgnError as exc:
            return exc
        if not dservice.running:
            return UnavailableError(f"DService {assignment.dservice!r} is restarting")
        return None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drain(self, call: Any, grace_s: float) -> None:
        """Lets running units finish within the grace, stops the rest, says Goodbye."""
        running = list(self._tasks.values())
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for task in late:
                task.cancel()
        assert self._writer is not None
        if (
            exc := await self._writer.send_quietly(
                pb.ConnectRequest(goodbye=pb.Goodbye(reason="drained"))
            )
        ) is not None:
            log_event(_log, "miner_send_failed", logging.WARNING, error=repr(exc))
        with contextlib.suppress(*STREAM_GONE):
            await call.done_writing()
        self._drained.set()
        log_event(_log, "miner_drained", stopped=sum(not t.done() for t in running))

    async def _report_cancelled(
        self, nonce: str, token: str, task: asyncio.Task[None], spent: Spent
    ) -> None:
        """Once a unit the node cancelled has stopped, answers the WorkCancel with a
        WorkCompletion carrying the usage up to the cancel (abandoned work is billed for it,
        SPEC 15); the bytes in are the request body's, the bytes out none."""
        await asyncio.wait({task})
        usage = resources_pb2.ResourceUsage(
            bytes_in=spent.bytes_in,
            cpu_time_metering=int(spent.cpu_metering),  # type: ignore[arg-type]
        )
        usage.cpu_time.FromMicroseconds(spent.cpu_time_us)
        usage.wall_time.FromMicroseconds(spent.wall_time_us)
        completion = pb.WorkCompletion(dispatch_token=token, usage=usage)
        self._post(pb.ConnectRequest(response_nonce=nonce, completion=completion))
        log_event(
            _log,
            "work_cancelled",
            cpu_us=spent.cpu_time_us,
            wall_us=spent.wall_time_us,
            metered=spent.ended,
        )

    def _start_work(self, nonce: str, assignment: pb.WorkAssignment) -> None:
        token = assignment.dispatch_token
        spent = self._spent[token] = Spent(bytes_in=assignment.body_size or len(assignment.body))
        task = asyncio.create_task(self._work(nonce, assignment, spent))
        self._tasks[token] = task
        task.add_done_callback(lambda _: self._ended(token))

    async def _work(self, nonce: str, assignment: pb.WorkAssignment, spent: Spent) -> None:
        """Runs one unit; every outcome is answered (a cancel from the node, by
        _report_cancelled). A body too large to travel inline comes (streamed into the
        DService as it arrives), and an answer too large goes, on the dispatch's data plane
        (_Exchange), closed whatever happens."""
        exchange: list[_Exchange] = []
        try:
            await self._run_unit(nonce, assignment, spent, exchange)
        except grpc.aio.AioRpcError as exc:  # the data plane broke (the node knows why)
            log_event(_log, "data_plane_failed", logging.WARNING, error=exc.details())
        finally:
            for plane in exchange:
                plane.close()

    async def _run_unit(
        self,
        nonce: str,
        assignment: pb.WorkAssignment,
        spent: Spent,
        exchange: list[_Exchange],
    ) -> None:
        """Calls the DService, with the body streamed from the data plane when it did not
        come inline, and sends its answer as it arrives; a failure is answered with a
        WorkFailure. ``exchange`` gets the data plane when one is opened."""
        token = assignment.dispatch_token
        lease_s = assignment.lease.ToMilliseconds() / 1000 or 3.0
        # The node cancels the unit at its deadline, and the miner answers the cancel with the
        # usage so far (abandoned work is billed for it); the miner's own timeout, a grace
        # later, only stops a unit whose node never cancels it.
        timeout = assignment.timeout.ToMilliseconds() / 1000
        timeout_s = timeout + DEADLINE_GRACE_S if timeout else None
        heartbeat = _Heartbeat(self._post, nonce, token, lease_s)
        try:
            # Until the answer's head: a streamed answer's body then takes as long as it takes
            # (a long download, server-sent events), its lease kept by the heartbeat.
            async with asyncio.timeout(timeout_s) as until_head:
                _check_body_size(assignment, self._runtime.get(assignment.dservice).max_body_bytes)
                body: RequestBody = assignment.body
                if not assignment.body_complete:
                    exchange.append(await self._open_exchange(token))
                    body = exchange[0].request_body(assignment.body_size)
                await self._serve(nonce, assignment, body, spent, exchange, until_head)
            return
        except TimeoutError:
            error: CgnError = DeadlineExceededError("DService timed out")
        except CgnError as exc:
            error = exc
        except grpc.aio.AioRpcError as exc:
            error = UnavailableError(f"the data plane failed: {exc.details()}")
        except Exception as exc:  # the unit must be answered whatever went wrong
            log_event(
                _log,
                "work_crashed",
                logging.ERROR,
                exc=exc,
                work_id=assignment.work_id,
                request_id=assignment.request_id,
            )
            error = DServiceFailedError("the miner failed")
        finally:
            heartbeat.cancel()
        self._fail(nonce, assignment, error)

    async def _open_exchange(self, token: str) -> _Exchange:
        assert self._data_stub is not None
        return await _Exchange.open(self._data_stub, token)

    async def _serve(
        self,
        nonce: str,
        assignment: pb.WorkAssignment,
        body: RequestBody,
        spent: Spent,
        exchange: list[_Exchange],
        until_head: asyncio.Timeout | None = None,
    ) -> None:
        """Calls the DService and sends the answer: inline on the control stream when its head
        says the body is at most INLINE_BODY_BYTES, else on the data plane as it arrives (a
        slice at a time, paced by gRPC flow control: the miner never holds a large answer,
        and a DService that streams, e.g. server-sent lines, reaches the caller at once).
        ``until_head`` (the unit's timeout) stops once a streamed answer's head is out."""
        head = assignment.head
        headers = [(h.name, h.value) for h in head.headers if h.name.lower() not in _OURS]
        if assignment.request_id:
            headers.append(("X-Request-Id", assignment.request_id.encode()))
        headers.append(("X-CGN-Attempt", str(assignment.attempt or 1).encode()))
        dservice = self._runtime.get(assignment.dservice)
        token = assignment.dispatch_token
        buffered: list[bytes] = []
        size = 0
        async with dservice.stream(
            head.method, head.path, head.query, headers, body, spent
        ) as answer:
            streamed = not _fits_inline(head.method, answer)
            if streamed:  # on the data plane, each slice as the DService produces it
                if not exchange:
                    exchange.append(await self._open_exchange(token))
                await exchange[0].send_head(_response_head(answer, None))
                if until_head is not None:
                    until_head.reschedule(None)
                async for chunk in answer.body:
                    size += len(chunk)
                    await exchange[0].send_body(chunk)
            else:
                async for chunk in answer.body:
                    buffered.append(chunk)
                    size += len(chunk)
        usage = resources_pb2.ResourceUsage(
            bytes_in=assignment.body_size or len(assignment.body),
            bytes_out=size,
            peak_memory_bytes=answer.peak_memory_bytes,
            cpu_time_metering=int(answer.cpu_metering),  # type: ignore[arg-type]
            peak_memory_metering=int(answer.peak_memory_metering),  # type: ignore[arg-type]
        )
        usage.cpu_time.FromMicroseconds(answer.cpu_time_us)
        usage.wall_time.FromMicroseconds(answer.wall_time_us)
        completion = pb.WorkCompletion(dispatch_token=token, usage=usage)
        if streamed:
            await exchange[0].finish(completion)
        elif exchange:  # the request came on the data plane: the answer goes back on it
            await exchange[0].send_head(_response_head(answer, size))
            if size:
                await exchange[0].send_body(b"".join(buffered))
            await exchange[0].finish(completion)
        else:
            response = pb.WorkResponse(
                dispatch_token=token,
                head=_response_head(answer, size),
                body=b"".join(buffered),
                body_complete=True,
                completion=completion,
            )
            self._answer(token, pb.ConnectRequest(response_nonce=nonce, response=response))
        self.completed += 1

    def _fail(self, nonce: str, assignment: pb.WorkAssignment, error: CgnError) -> None:
        self.failed += 1
        log_event(
            _log,
            "work_failed",
            logging.WARNING,
            work_id=assignment.work_id,
            request_id=assignment.request_id,
            error=error.message,
        )
        failure = pb.WorkFailure(
            dispatch_token=assignment.dispatch_token, status=status_proto(error)
        )
        self._answer(
            assignment.dispatch_token,
            pb.ConnectRequest(response_nonce=nonce, failure=failure),
        )


def _check_body_size(assignment: pb.WorkAssignment, limit: int) -> None:
    """Refuses, before fetching it, a request body over the DService's descriptor limit
    (``limit``, 0: none); the node checks first, this holds for any node."""
    size = assignment.body_size if not assignment.body_complete else len(assignment.body)
    if limit and size > limit:
        raise BodyTooLargeError(
            f"the request body is {size} bytes, over the limit of DService "
            f"{assignment.dservice!r} of {limit} bytes (dservice)"
        )


def _fits_inline(method: str, answer: DServiceAnswer) -> bool:
    """Whether the answer goes whole on the control stream: no body (HEAD, 204, 304), or a
    Content-Length of at most INLINE_BODY_BYTES. Without a length (chunked, or until close)
    it streams on the data plane, however short it turns out: the DService may be sending it
    bit by bit, and the caller gets each bit at once."""
    if method == "HEAD" or answer.status in (204, 304):
        return True
    for name, value in answer.headers:
        if name.lower() == "content-length":
            try:
                return int(value) <= INLINE_BODY_BYTES
            except ValueError:
                return False
    return False


def _response_head(answer: DServiceAnswer, size: int | None) -> http_pb2.HttpResponseHead:
    """The answer's head for the node; ``size`` when the whole body is known."""
    head = http_pb2.HttpResponseHead(
        status_code=answer.status,
        headers=[http_pb2.HttpHeader(name=n, value=v) for n, v in answer.headers],
    )
    if size is not None:
        head.content_length = size
    return head


def _miner_batch(messages: list[pb.ConnectRequest]) -> pb.ConnectRequest:
    """Miner messages written together, for a node that reads batches."""
    return pb.ConnectRequest(batch=pb.MinerBatch(messages=messages))
