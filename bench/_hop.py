"""The one-hop baseline of bench/request_path.py: an aiohttp front that makes one grpc.aio
unary call per request to a gRPC server that answers at once, nothing else; and the two-hop
floor: the CGN's process layout and transports with none of its work.

The hop, two processes, each started by the bench::

    python bench/_hop.py grpc  --listen 127.0.0.1:P --cert C --key K --ca CA
    python bench/_hop.py front --listen 127.0.0.1:Q --upstream 127.0.0.1:P --cert C --key K --ca CA

The floor, three processes: a front as above whose upstream is a ``relay`` (the node's place),
and a ``responder`` (the miner's place) that dials the relay's stream port::

    python bench/_hop.py relay --listen 127.0.0.1:P --stream-listen 127.0.0.1:S --cert .. --ca ..
    python bench/_hop.py responder --upstream 127.0.0.1:S --ca CA
    python bench/_hop.py front --listen 127.0.0.1:Q --upstream 127.0.0.1:P --cert .. --ca ..

The relay serves ``WorkService.Call`` on ``--listen`` (mutual TLS, as the node's work port)
and, on ``--stream-listen`` (server-authenticated TLS, as the node's miner port), the real
``MinerLinkService.Connect`` stream: each call becomes one ``WorkAssignment`` on the
responder's stream, and the ``WorkResponse`` the responder sends back at once (body inline) is
the call's answer. Both sides write with the CGN's own ``StreamWriter`` and batch what queues
up during a write (``NodeBatch``/``MinerBatch``), as the node and the miner do with the
``batch`` feature. No authentication of calls, broker, billing, metering or DService call: a
request through the floor pays only the CGN's processes and hops.

The link is the CGN's gateway -> node link minus the CGN: mutual TLS with certificates of the
operator CA (``cgn_common.tls`` credentials, ``cgn_common.rpc`` channel and server options), the
real ``cgn.work.v1.WorkService/Call`` messages (``CallRequest`` in, ``CallResponse`` out), so
(de)serialization costs what it costs the gateway and the node. The gRPC server has no
interceptors, no health or reflection service, no revocation list: it returns the request body
in a 200 answer. The front copies method, path, query and headers into the ``HttpRequestHead``
as the gateway does, and answers with the ``CallResponse``'s status and body.

Each runs on asyncio's own loop, or on uvloop with ``--uvloop`` (the bench passes it when the
CGN's processes run on uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections.abc import Sequence
from typing import Any

import grpc
import uvloop
from aiohttp import web

from cgn_common.rpc import SERVER_OPTIONS, open_channel
from cgn_common.streams import StreamWriter
from cgn_common.tls import ClientAuth, TlsConfig, server_credentials
from generated.cgn.common.v1 import http_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as link_pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as link_grpc
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc

CALL_METHOD = "/cgn.work.v1.WorkService/Call"
CALL_TIMEOUT_S = 30.0


async def _answer(request: work_pb.CallRequest, context: object) -> work_pb.CallResponse:
    """The whole server: the request body back, at once."""
    return work_pb.CallResponse(
        head=http_pb2.HttpResponseHead(
            status_code=200,
            headers=[http_pb2.HttpHeader(name="Content-Type", value=b"application/octet-stream")],
            content_length=len(request.body),
        ),
        body=request.body,
    )


async def _wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve_until_stopped(server: grpc.aio.Server) -> None:
    """Starts ``server`` and serves until SIGTERM."""
    await server.start()
    try:
        await _wait_for_stop()
    finally:
        await server.stop(1.0)


async def serve_grpc(listen: str, tls: TlsConfig) -> None:
    """Serves WorkService.Call on ``listen`` (mutual TLS) until SIGTERM."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.unary_unary_rpc_method_handler(
        _answer,
        request_deserializer=work_pb.CallRequest.FromString,
        response_serializer=work_pb.CallResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("cgn.work.v1.WorkService", {"Call": handler}),)
    )
    if not server.add_secure_port(listen, server_credentials(tls, ClientAuth.REQUIRED, "hop")):
        raise OSError(f"cannot bind {listen}")
    await _serve_until_stopped(server)


def _node_batch(messages: list[link_pb.ConnectResponse]) -> link_pb.ConnectResponse:
    return link_pb.ConnectResponse(batch=link_pb.NodeBatch(messages=messages))


def _miner_batch(messages: list[link_pb.ConnectRequest]) -> link_pb.ConnectRequest:
    return link_pb.ConnectRequest(batch=link_pb.MinerBatch(messages=messages))


class _Relay:
    """The floor's middle process: each Call from the front goes, round robin as the node's
    broker deals work over free miners, to one of the connected responders' streams as one
    WorkAssignment, and its WorkResponse is the call's answer."""

    def __init__(self) -> None:
        #: The connected streams' writers, in the order they connected.
        self._streams: list[StreamWriter] = []
        #: Each stream's calls not answered yet (they fail when it ends).
        self._unanswered: dict[StreamWriter, set[str]] = {}
        self._turn = 0
        self._connected = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[link_pb.WorkResponse]] = {}
        self._tokens = itertools.count()

    def _next_stream(self) -> StreamWriter:
        self._turn = (self._turn + 1) % len(self._streams)
        return self._streams[self._turn]

    async def call(self, request: work_pb.CallRequest, context: Any) -> work_pb.CallResponse:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            while not self._streams:
                await self._connected.wait()
            token = str(next(self._tokens))
            answer = asyncio.get_running_loop().create_future()
            self._waiting[token] = answer
            try:
                work = link_pb.WorkAssignment(
                    dservice=request.dservice,
                    head=request.head,
                    body=request.body,
                    body_complete=True,
                    body_size=len(request.body),
                    dispatch_token=token,
                )
                message = link_pb.ConnectResponse(nonce=token, assignment=work)
                stream = self._next_stream()
                if (gone := stream.post(message)) is not None:
                    raise gone
                self._unanswered[stream].add(token)
                try:
                    response = await answer
                finally:
                    self._unanswered.get(stream, set()).discard(token)
            finally:
                self._waiting.pop(token, None)
        return work_pb.CallResponse(head=response.head, body=response.body)

    async def connect(self, requests: Any, context: Any) -> None:
        """A responder's stream: its hello (answered with a Welcome), then its answers until
        it leaves."""
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello":
            return
        writer = StreamWriter(context.write, batch=_node_batch)
        await writer.send(link_pb.ConnectResponse(welcome=link_pb.Welcome(features=["batch"])))
        self._streams.append(writer)
        self._unanswered[writer] = set()
        self._connected.set()
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                for one in message.batch.messages if message.HasField("batch") else (message,):
                    if one.HasField("response"):
                        waiting = self._waiting.get(one.response.dispatch_token)
                        if waiting is not None and not waiting.done():
                            waiting.set_result(one.response)
        finally:
            self._streams.remove(writer)
            if not self._streams:
                self._connected.clear()
            for token in self._unanswered.pop(writer):  # never answered now: say so
                if (waiting := self._waiting.get(token)) is not None and not waiting.done():
                    waiting.set_exception(ConnectionError("the responder's stream ended"))


async def serve_relay(listen: str, stream_listen: str, tls: TlsConfig) -> None:
    """Serves WorkService.Call on ``listen`` (mutual TLS) and MinerLinkService.Connect on
    ``stream_listen`` (server-authenticated TLS) until SIGTERM."""
    relay = _Relay()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    call = grpc.unary_unary_rpc_method_handler(
        relay.call,
        request_deserializer=work_pb.CallRequest.FromString,
        response_serializer=work_pb.CallResponse.SerializeToString,
    )
    connect = grpc.stream_stream_rpc_method_handler(
        relay.connect,
        request_deserializer=link_pb.ConnectRequest.FromString,
        response_serializer=link_pb.ConnectResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("cgn.work.v1.WorkService", {"Call": call}),
            grpc.method_handlers_generic_handler(
                "cgn.minerlink.v1.MinerLinkService", {"Connect": connect}
            ),
        )
    )
    bound = server.add_secure_port(listen, server_credentials(tls, ClientAuth.REQUIRED, "relay"))
    bound = bound and server.add_secure_port(
        stream_listen, server_credentials(tls, ClientAuth.NONE, "relay")
    )
    if not bound:
        raise OSError(f"cannot bind {listen} and {stream_listen}")
    await _serve_until_stopped(server)


async def _respond(upstream: str, ca_file: str, welcomed: asyncio.Event) -> None:
    """One responder stream: dials the relay (a connection of its own, as each miner has),
    then answers every assignment at once with its body until the stream ends."""
    # Server-authenticated TLS with the CGN's channel options, as a miner dials its node.
    async with open_channel(upstream, TlsConfig("", "", ca_file), own_connection=True) as channel:
        call: Any = link_grpc.MinerLinkServiceStub(channel).Connect()
        writer = StreamWriter(call.write, batch=_miner_batch)
        await writer.send(link_pb.ConnectRequest(hello=link_pb.MinerHello(features=["batch"])))
        while (message := await call.read()) is not grpc.aio.EOF:
            for one in message.batch.messages if message.HasField("batch") else (message,):
                if one.HasField("welcome"):
                    welcomed.set()
                    continue
                work = one.assignment
                response = link_pb.WorkResponse(
                    dispatch_token=work.dispatch_token,
                    head=http_pb2.HttpResponseHead(status_code=200, content_length=len(work.body)),
                    body=work.body,
                    body_complete=True,
                )
                writer.post(link_pb.ConnectRequest(response_nonce=one.nonce, response=response))


async def serve_responder(upstream: str, ca_file: str, streams: int) -> None:
    """Holds ``streams`` streams to the relay, each answering at once; prints ``connected N``
    once the relay has welcomed all of them; runs until SIGTERM."""
    welcomed = [asyncio.Event() for _ in range(streams)]
    tasks = [asyncio.create_task(_respond(upstream, ca_file, w)) for w in welcomed]
    stop = asyncio.create_task(_wait_for_stop())
    all_welcomed = asyncio.gather(*(w.wait() for w in welcomed))
    all_welcomed.add_done_callback(lambda _: print(f"connected {streams}", flush=True))
    done, _ = await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
    all_welcomed.cancel()
    for task in (*tasks, stop):
        task.cancel()
    for task in done - {stop}:
        task.result()  # a stream ended before SIGTERM: say why


async def serve_front(listen: str, upstream: str, tls: TlsConfig) -> None:
    """Serves HTTP on ``listen``: every request becomes one Call to ``upstream``."""
    channel = open_channel(upstream, tls)
    stub = work_grpc.WorkServiceStub(channel)

    async def forward(request: web.Request) -> web.Response:
        head = http_pb2.HttpRequestHead(
            method=request.method,
            path=request.path,
            query=request.rel_url.raw_query_string,
            headers=[
                http_pb2.HttpHeader(name=n.decode("latin-1"), value=v)
                for n, v in request.raw_headers
            ],
        )
        call = work_pb.CallRequest(dservice="echo", head=head, body=await request.read())
        response: work_pb.CallResponse = await stub.Call(call, timeout=CALL_TIMEOUT_S)
        return web.Response(status=response.head.status_code, body=response.body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host, int(port), backlog=1024).start()
    try:
        await _wait_for_stop()
    finally:
        await runner.cleanup()
        await channel.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", choices=("grpc", "front", "relay", "responder"))
    parser.add_argument("--listen", default="", help="host:port to serve on")
    parser.add_argument(
        "--upstream",
        default="",
        help="front: the gRPC server's (or relay's) host:port; responder: the relay's stream",
    )
    parser.add_argument("--stream-listen", default="", help="relay: host:port of its stream")
    parser.add_argument(
        "--streams", type=int, default=1, help="responder: how many streams (connections) to hold"
    )
    parser.add_argument("--cert", default="", help="this process's certificate (PEM)")
    parser.add_argument("--key", default="", help="its private key (PEM)")
    parser.add_argument("--ca", required=True, help="the CA bundle (PEM)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, not asyncio's loop")
    args = parser.parse_args(argv)
    tls = TlsConfig(args.cert, args.key, args.ca)
    coro = {
        "grpc": lambda: serve_grpc(args.listen, tls),
        "front": lambda: serve_front(args.listen, args.upstream, tls),
        "relay": lambda: serve_relay(args.listen, args.stream_listen, tls),
        "responder": lambda: serve_responder(args.upstream, args.ca, args.streams),
    }[args.role]()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if args.uvloop else None) as runner:
        runner.run(coro)


if __name__ == "__main__":
    main()
