"""The one-hop baseline of bench/request_path.py: an aiohttp front that makes one grpc.aio
unary call per request to a gRPC server that answers at once, nothing else.

Two processes, each started by the bench::

    python bench/_hop.py grpc  --listen 127.0.0.1:P --cert C --key K --ca CA
    python bench/_hop.py front --listen 127.0.0.1:Q --upstream 127.0.0.1:P --cert C --key K --ca CA

The link is the CGN's gateway -> node link minus the CGN: mutual TLS with certificates of the
operator CA (``cgn_common.tls`` credentials, ``cgn_common.rpc`` channel and server options), the
real ``cgn.work.v1.WorkService/Call`` messages (``CallRequest`` in, ``CallResponse`` out), so
(de)serialization costs what it costs the gateway and the node. The gRPC server has no
interceptors, no health or reflection service, no revocation list: it returns the request body
in a 200 answer. The front copies method, path, query and headers into the ``HttpRequestHead``
as the gateway does, and answers with the ``CallResponse``'s status and body.

Both run on the default asyncio loop, as the gateway and the node do; ``--uvloop`` runs one on
uvloop instead.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import grpc
import uvloop
from aiohttp import web

from cgn_common.rpc import SERVER_OPTIONS, open_channel
from cgn_common.tls import ClientAuth, TlsConfig, server_credentials
from generated.cgn.common.v1 import http_pb2
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
    await server.start()
    try:
        await _wait_for_stop()
    finally:
        await server.stop(1.0)


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
    parser.add_argument("role", choices=("grpc", "front"))
    parser.add_argument("--listen", required=True, help="host:port to serve on")
    parser.add_argument("--upstream", default="", help="front: the gRPC server's host:port")
    parser.add_argument("--cert", required=True, help="this process's certificate (PEM)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    parser.add_argument("--ca", required=True, help="the CA bundle (PEM)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, not asyncio's loop")
    args = parser.parse_args(argv)
    tls = TlsConfig(args.cert, args.key, args.ca)
    if args.role == "grpc":
        coro = serve_grpc(args.listen, tls)
    else:
        coro = serve_front(args.listen, args.upstream, tls)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if args.uvloop else None) as runner:
        runner.run(coro)


if __name__ == "__main__":
    main()
