"""gRPC plumbing shared by every server and client: servers with health checking, reflection,
TLS and the authorization and error interceptors; channels; status conversion."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cgn_common.interceptors import AuthorizationInterceptor, ErrorInterceptor, Rules
from cgn_common.logs import log_event
from cgn_common.status import error_from_rpc, error_from_status, status_proto
from cgn_common.tls import (
    ClientAuth,
    RevocationList,
    TlsConfig,
    channel_credentials,
    server_credentials,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "GrpcServer",
    "error_from_rpc",
    "error_from_status",
    "open_channel",
    "status_proto",
]

_log = logging.getLogger(__name__)

#: Largest gRPC message either side accepts. Unary bodies are bounded below this by config;
#: larger bodies use the streaming RPCs in 1 MiB chunks.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


def open_channel(
    address: str, tls: TlsConfig, *, server_name: str = "", own_connection: bool = False
) -> grpc.aio.Channel:
    """Opens an asyncio channel to ``address`` ("host:port") over TLS (plaintext only with
    the development flag). ``server_name`` is the name the server's certificate must carry
    when it is not the host in ``address`` (e.g. a node's ``<node_id>.node.cgn``).
    ``own_connection``: never share a connection with another channel to the same address
    (gRPC shares them by default), e.g. so that bulk data cannot queue ahead of control
    messages in one TCP connection."""
    options = list(CHANNEL_OPTIONS)
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if tls.insecure_plaintext:
        return grpc.aio.insecure_channel(address, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=options)


class GrpcServer:
    """One listening gRPC server with health checking and reflection.

    Register services with ``add(adder, servicer, service_full_name)``, then ``await
    start(address)``; the bound port is in ``port`` (bind port 0 to let the OS choose).
    On a mutual-TLS port, client certificates listed in ``tls.crl_file`` are refused;
    ``revocations`` replaces the list built from it (tests pass one with their own clock).
    """

    def __init__(
        self,
        name: str,
        tls: TlsConfig,
        client_auth: ClientAuth,
        rules: Rules,
        verify_session: Callable[[str], Any] | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self.name = name
        self._tls = tls
        self._client_auth = client_auth
        # A server-authenticated port never asks for a client certificate: nothing to check.
        wants_list = tls.crl_file and client_auth is ClientAuth.REQUIRED
        if revocations is None and wants_list and not tls.insecure_plaintext:
            revocations = RevocationList(tls, name)
        authorization = AuthorizationInterceptor(
            rules,
            name,
            verify_session,
            trust_plaintext=tls.insecure_plaintext,
            revocations=revocations,
        )
        self._server = grpc.aio.server(
            options=SERVER_OPTIONS, interceptors=[ErrorInterceptor(), authorization]
        )
        self._health = health.aio.HealthServicer()
        self._services: list[str] = []
        self.port = 0
        self.host = ""

    def add(
        self, adder: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str
    ) -> None:
        """Registers ``servicer`` with the generated ``add_XServicer_to_server`` function."""
        adder(servicer, self._server)
        self._services.append(full_name)

    def add_handlers(self, *handlers: grpc.GenericRpcHandler) -> None:
        """Registers hand-built handlers (each method still needs an authorization rule)."""
        self._server.add_generic_rpc_handlers(handlers)

    async def start(self, address: str) -> str:
        """Binds ``address`` and starts serving; returns the bound "host:port"."""
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [*self._services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], self._server)
        creds = server_credentials(self._tls, self._client_auth, self.name)
        if creds is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, creds)
        if self.port == 0:
            raise OSError(f"{self.name}: cannot bind {address}")
        self.host = address.rsplit(":", 1)[0]
        await self._server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._health.set("", serving)
        for service in self._services:
            await self._health.set(service, serving)
        log_event(_log, "grpc_server_started", server=self.name, address=self.address)
        return self.address

    @property
    def address(self) -> str:
        """The bound "host:port"."""
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float = 2.0) -> None:
        """Marks the server not serving, then stops it within ``grace`` seconds."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
