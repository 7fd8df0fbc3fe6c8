"""A miner written from docs/miner-protocol.md and the protos alone, in a different style from
``miner/``: synchronous, on grpc's blocking API, one thread reading the stream and a queue
feeding it. It echoes request bodies, NACKs assignments it finds malformed (here: a path of
``/malformed``), reports WorkSlots, honours Drain and answers Pings."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from generated.cgn.common.v1 import dservice_pb2, http_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc

_DONE = object()


@dataclass
class SyncMiner:
    """Run ``serve()`` in a thread; it returns when the stream ends."""

    address: str
    ca_pem: bytes
    miner_id: str
    api_key: str
    slots: int = 2
    #: Assignments for this path are "malformed" to this miner: it NACKs them.
    nack_path: str = "/malformed"
    nacked: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    drained: threading.Event = field(default_factory=threading.Event)
    welcomed: threading.Event = field(default_factory=threading.Event)
    ended: str = ""

    def __post_init__(self) -> None:
        self._out: queue.Queue[object] = queue.Queue()

    def _requests(self) -> Iterator[pb.ConnectRequest]:
        while (item := self._out.get()) is not _DONE:
            assert isinstance(item, pb.ConnectRequest)
            yield item

    def _send(self, message: pb.ConnectRequest) -> None:
        self._out.put(message)

    def serve(self) -> None:
        """Connects, then answers every node message until the stream ends."""
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        with grpc.secure_channel(self.address, credentials) as channel:
            stub = pb_grpc.MinerLinkServiceStub(channel)
            hello = pb.MinerHello(
                miner_id=self.miner_id,
                api_key=self.api_key,
                dservices=[dservice_pb2.DServiceOffer(name="echo")],
                max_concurrent_work_units=self.slots,
                software_version="sync-test-miner",
            )
            self._send(pb.ConnectRequest(hello=hello))
            try:
                for message in stub.Connect(self._requests()):
                    self._handle(message)
                self.ended = "EOF"
            except grpc.RpcError as exc:
                self.ended = exc.code().name
            finally:
                self._out.put(_DONE)

    def _handle(self, message: pb.ConnectResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "welcome":
            self.welcomed.set()
        elif kind == "assignment":
            self._assignment(message.nonce, message.assignment)
        elif kind == "ping":
            self._send(pb.ConnectRequest(response_nonce=message.nonce, pong=pb.Pong()))
        elif kind == "drain":
            # Nothing runs concurrently here: every unit was answered before the next message.
            self._send(pb.ConnectRequest(response_nonce=message.nonce, ack=pb.Ack()))
            self._send(pb.ConnectRequest(goodbye=pb.Goodbye(reason="drained")))
            self.drained.set()
            self._out.put(_DONE)  # half-close: the node ends the stream

    def _assignment(self, nonce: str, work: pb.WorkAssignment) -> None:
        if not work.dispatch_token or work.head.path == self.nack_path:
            nack = pb.ConnectRequest(response_nonce=nonce, ack=pb.Ack())
            nack.error_detail.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            nack.error_detail.message = "malformed assignment"
            self._send(nack)
            self.nacked.append(work.work_id)
            return
        self._send(pb.ConnectRequest(response_nonce=nonce, ack=pb.Ack()))
        response = pb.WorkResponse(
            dispatch_token=work.dispatch_token,
            head=http_pb2.HttpResponseHead(status_code=200, content_length=len(work.body)),
            body=work.body,
            body_complete=True,
            completion=pb.WorkCompletion(dispatch_token=work.dispatch_token),
        )
        self._send(pb.ConnectRequest(response_nonce=nonce, response=response))
        self.served.append(work.work_id)
        # Every unit is answered at once, so every slot is free again.
        self._send(pb.ConnectRequest(response_nonce=nonce, slots=pb.WorkSlots(free=self.slots)))
