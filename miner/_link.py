"""The miner's side of the miner link: hello, then ack and run each assignment."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from cgn_common.errors import CgnError
from cgn_common.logs import log_event
from cgn_common.rpc import status_proto
from generated.cgn.common.v1 import dservice_pb2, http_pb2, resources_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc
from miner.config import MinerConfig
from miner.fitness import FitnessResult
from miner.runtime import ProcessRuntime

_log = logging.getLogger(__name__)


class LinkSession:
    """One connection to a node; ``run`` returns when the stream ends."""

    def __init__(
        self, config: MinerConfig, runtime: ProcessRuntime, fitness: FitnessResult
    ) -> None:
        self._config = config
        self._runtime = runtime
        self._fitness = fitness
        self._lock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}
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
        async with self._lock:
            await call.write(message)

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
                    await self._send(
                        call,
                        pb.ConnectRequest(
                            response_nonce=message.nonce,
                            work_ack=pb.WorkAck(work_id=message.assignment.work_id),
                        ),
                    )
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

    async def _work(self, call: Any, nonce: str, assignment: pb.WorkAssignment) -> None:
        head = assignment.head
        try:
            dservice = self._runtime.get(assignment.dservice)
            answer = await dservice.call(
                head.method,
                head.path,
                head.query,
                [(h.name, h.value) for h in head.headers],
                assignment.body,
            )
        except CgnError as exc:
            self.failed += 1
            log_event(
                _log, "work_failed", logging.WARNING, work_id=assignment.work_id, error=exc.message
            )
            failure = pb.WorkFailure(work_id=assignment.work_id, status=status_proto(exc))
            await self._send(call, pb.ConnectRequest(response_nonce=nonce, failure=failure))
            return
        completion = pb.WorkCompletion(
            work_id=assignment.work_id,
            usage=resources_pb2.ResourceUsage(
                cpu_time_us=answer.cpu_time_us,
                wall_time_us=answer.wall_time_us,
                bytes_in=len(assignment.body),
                bytes_out=len(answer.body),
                peak_memory_bytes=answer.peak_memory_bytes,
            ),
        )
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
        await self._send(call, pb.ConnectRequest(response_nonce=nonce, response=response))
        self.completed += 1
