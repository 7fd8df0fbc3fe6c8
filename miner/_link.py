"""The miner's side of the miner link: hello, then ack and run each assignment."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from cgn_common.errors import (
    CgnError,
    DeadlineExceededError,
    DServiceFailedError,
    UnavailableError,
)
from cgn_common.logs import log_event
from cgn_common.rpc import status_proto
from cgn_common.streams import StreamWriter
from generated.cgn.common.v1 import dservice_pb2, http_pb2, resources_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc
from miner.config import MinerConfig
from miner.fitness import FitnessResult
from miner.runtime import DServiceResponse, Runtime

_log = logging.getLogger(__name__)

#: The largest DService answer sent back whole (below gRPC's 64 MiB message limit); a larger
#: one is the DService's failure (502) until bodies stream.
MAX_RESPONSE_BYTES = 60 * 1024 * 1024

#: Request headers the miner sets itself; a DApp's copies are dropped.
_OURS = frozenset({"x-cgn-attempt", "x-request-id"})


class LinkSession:
    """One connection to a node; ``run`` returns when the stream ends."""

    def __init__(self, config: MinerConfig, runtime: Runtime, fitness: FitnessResult) -> None:
        self._config = config
        self._runtime = runtime
        self._fitness = fitness
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._request_ids: dict[str, str] = {}
        self._writer: StreamWriter | None = None
        self.welcome: pb.Welcome | None = None
        self.completed = 0
        self.failed = 0

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
            dservices=[dservice_pb2.DServiceOffer(name=n) for n in self._runtime.dservices],
            software_version="0.1.0",
            max_concurrent_work_units=self._config.max_concurrent_work_units,
            runtime=self._config.runtime,
        )

    async def _send(self, call: Any, message: pb.ConnectRequest) -> None:
        if self._writer is None:
            self._writer = StreamWriter(call.write)
        await self._writer.send(message)

    async def _send_quietly(self, call: Any, message: pb.ConnectRequest) -> None:
        """Sends, and only logs a failure: the stream is gone and the node knows it."""
        try:
            await self._send(call, message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError) as exc:
            log_event(_log, "miner_send_failed", logging.WARNING, error=repr(exc))

    async def run(self, channel: grpc.aio.Channel, connected: asyncio.Event) -> None:
        """Says hello and serves assignments until the stream ends."""
        call: Any = pb_grpc.MinerLinkServiceStub(channel).Connect()
        await call.write(pb.ConnectRequest(hello=self._hello()))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
            await call  # raises the node's refusal status
            return
        self.welcome = first.welcome
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
                kind = message.WhichOneof("kind")
                if kind == "assignment":
                    refusal = self._refusal(message.assignment)
                    await self._send(
                        call,
                        pb.ConnectRequest(
                            response_nonce=message.nonce,
                            work_ack=pb.WorkAck(
                                work_id=message.assignment.work_id, refusal=refusal
                            ),
                        ),
                    )
                    if refusal is None:
                        self._start_work(call, message.nonce, message.assignment)
                elif kind == "cancel":
                    cancelled = self._tasks.get(message.cancel.work_id)
                    if cancelled is not None:
                        cancelled.cancel()
                elif kind == "ping":
                    await self._send(
                        call, pb.ConnectRequest(response_nonce=message.nonce, pong=pb.Pong())
                    )
        finally:
            connected.clear()
            for task in list(self._tasks.values()):
                task.cancel()

    def _start_work(self, call: Any, nonce: str, assignment: pb.WorkAssignment) -> None:
        work_id = assignment.work_id
        task = asyncio.create_task(self._work(call, nonce, assignment))
        self._tasks[work_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(work_id, None))

    def _refusal(self, assignment: pb.WorkAssignment) -> Any:
        """Why this miner cannot take the unit at all (the node sends it elsewhere), or None."""
        try:
            dservice = self._runtime.get(assignment.dservice)
        except CgnError as exc:
            return status_proto(exc)
        if not dservice.running:
            return status_proto(UnavailableError(f"DService {assignment.dservice!r} is restarting"))
        return None

    async def _heartbeat(self, call: Any, nonce: str, work_id: str, lease_s: float) -> None:
        """Renews the unit's lease while it runs: a WorkProgress every third of a lease, with
        the wall time used so far (CPU is known only at the end: it is read per process)."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(lease_s / 3)
            progress = pb.WorkProgress(work_id=work_id)
            progress.usage_so_far.wall_time.FromMicroseconds(
                int((time.monotonic() - started) * 1_000_000)
            )
            await self._send_quietly(
                call, pb.ConnectRequest(response_nonce=nonce, progress=progress)
            )

    async def _work(self, call: Any, nonce: str, assignment: pb.WorkAssignment) -> None:
        """Runs one unit; every outcome but a cancel from the node is answered."""
        work_id = assignment.work_id
        self._request_ids[work_id] = assignment.request_id
        lease_s = assignment.lease.ToMilliseconds() / 1000 or 3.0
        timeout_s = assignment.timeout.ToMilliseconds() / 1000 or None
        heartbeat = asyncio.create_task(self._heartbeat(call, nonce, work_id, lease_s))
        try:
            async with asyncio.timeout(timeout_s):
                answer = await self._call_dservice(assignment)
        except TimeoutError:
            await self._fail(call, nonce, work_id, DeadlineExceededError("DService timed out"))
            return
        except CgnError as exc:
            await self._fail(call, nonce, work_id, exc)
            return
        except Exception as exc:  # the unit must be answered whatever went wrong
            log_event(
                _log,
                "work_crashed",
                logging.ERROR,
                exc=exc,
                work_id=work_id,
                request_id=assignment.request_id,
            )
            await self._fail(call, nonce, work_id, DServiceFailedError("the miner failed"))
            return
        finally:
            heartbeat.cancel()
            self._request_ids.pop(work_id, None)
        if len(answer.body) > MAX_RESPONSE_BYTES:
            too_big = DServiceFailedError(
                f"DService answer of {len(answer.body)} bytes exceeds {MAX_RESPONSE_BYTES}"
            )
            await self._fail(call, nonce, work_id, too_big)
            return
        await self._answer(call, nonce, assignment, answer)

    async def _call_dservice(self, assignment: pb.WorkAssignment) -> DServiceResponse:
        head = assignment.head
        headers = [(h.name, h.value) for h in head.headers if h.name.lower() not in _OURS]
        if assignment.request_id:
            headers.append(("X-Request-Id", assignment.request_id.encode()))
        headers.append(("X-CGN-Attempt", str(assignment.attempt or 1).encode()))
        dservice = self._runtime.get(assignment.dservice)
        return await dservice.call(head.method, head.path, head.query, headers, assignment.body)

    async def _fail(self, call: Any, nonce: str, work_id: str, error: CgnError) -> None:
        self.failed += 1
        log_event(
            _log,
            "work_failed",
            logging.WARNING,
            work_id=work_id,
            request_id=self._request_ids.get(work_id, ""),
            error=error.message,
        )
        failure = pb.WorkFailure(work_id=work_id, status=status_proto(error))
        await self._send_quietly(call, pb.ConnectRequest(response_nonce=nonce, failure=failure))

    async def _answer(
        self, call: Any, nonce: str, assignment: pb.WorkAssignment, answer: DServiceResponse
    ) -> None:
        usage = resources_pb2.ResourceUsage(
            bytes_in=len(assignment.body),
            bytes_out=len(answer.body),
            peak_memory_bytes=answer.peak_memory_bytes,
        )
        usage.cpu_time.FromMicroseconds(answer.cpu_time_us)
        usage.wall_time.FromMicroseconds(answer.wall_time_us)
        completion = pb.WorkCompletion(work_id=assignment.work_id, usage=usage)
        response = pb.WorkResponse(
            work_id=assignment.work_id,
            head=http_pb2.HttpResponseHead(
                status_code=answer.status,
                headers=[http_pb2.HttpHeader(name=n, value=v) for n, v in answer.headers],
                content_length=len(answer.body),
            ),
            body=answer.body,
            body_complete=True,
            completion=completion,
        )
        await self._send_quietly(call, pb.ConnectRequest(response_nonce=nonce, response=response))
        self.completed += 1
