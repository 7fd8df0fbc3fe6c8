"""gRPC plumbing shared by every server and client: building servers with health checking
and reflection, channel options, credentials seams and error translation."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from cgn_common.errors import CgnError, InvalidArgumentError, error_for_code
from cgn_common.logs import log_event

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


@dataclass(frozen=True)
class TlsConfig:
    """Where TLS material lives. Empty paths mean plaintext (loopback development only).

    Mutual TLS between node, miners and Central comes with the TLS issue; this is the seam.
    """

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    @property
    def enabled(self) -> bool:
        """True when any TLS material is configured (a client may have only a CA bundle)."""
        return bool(self.cert_file or self.ca_file)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    """Returns server credentials for ``tls``, or None for plaintext."""
    if not tls.enabled:
        return None
    if not tls.cert_file or not tls.key_file:
        raise InvalidArgumentError("a TLS server needs tls_cert_file and tls_key_file")
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file), _read(tls.cert_file))],
        root_certificates=_read(tls.ca_file) if tls.ca_file else None,
        require_client_auth=bool(tls.ca_file),
    )


def open_channel(address: str, tls: TlsConfig | None = None) -> grpc.aio.Channel:
    """Opens an asyncio channel to ``address`` ("host:port"), with TLS when configured."""
    if tls is None or not tls.enabled:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file) if tls.ca_file else None,
        private_key=_read(tls.key_file) if tls.key_file else None,
        certificate_chain=_read(tls.cert_file) if tls.cert_file else None,
    )
    return grpc.aio.secure_channel(address, creds, options=CHANNEL_OPTIONS)


class GrpcServer:
    """One listening gRPC server with health checking and reflection.

    Register services with ``add(adder, servicer, service_full_name)``, then ``await
    start(address)``; the bound port is in ``port`` (bind port 0 to let the OS choose).
    """

    def __init__(self, name: str, tls: TlsConfig | None = None) -> None:
        self.name = name
        self._tls = tls or TlsConfig()
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
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

    async def start(self, address: str) -> str:
        """Binds ``address`` and starts serving; returns the bound "host:port"."""
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [*self._services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], self._server)
        creds = server_credentials(self._tls)
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


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Returns the bearer token from the call's ``authorization`` metadata, or ''."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return ""


def status_proto(error: CgnError) -> status_pb2.Status:
    """The google.rpc.Status that carries ``error``."""
    return status_pb2.Status(code=error.code.value[0], message=error.message)


def error_from_status(status: status_pb2.Status) -> CgnError:
    """The CgnError a google.rpc.Status stands for."""
    for code in grpc.StatusCode:
        if code.value[0] == status.code:
            return error_for_code(code, status.message)
    return CgnError(status.message)


def error_from_rpc(exc: grpc.aio.AioRpcError) -> CgnError:
    """The CgnError a failed call stands for; the message is the server's, already safe."""
    return error_for_code(exc.code(), exc.details() or exc.code().name)


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
) -> None:
    if isinstance(exc, CgnError):
        error = exc
    else:
        log_event(_log, "rpc_internal_error", logging.ERROR, method=method, error=repr(exc))
        error = CgnError("internal error")
    status = status_proto(error)
    if error.code is grpc.StatusCode.INTERNAL:
        status.code = code_pb2.INTERNAL
    await context.abort_with_status(rpc_status.to_status(status))


F = TypeVar("F", bound=Callable[..., Any])


def translate_errors(method: F) -> F:
    """Wraps a servicer method so that exceptions become gRPC statuses, in one place.

    A CgnError keeps its code and message; anything else is logged and answers INTERNAL
    with no internals in the message.
    """
    name = method.__qualname__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except BaseException as exc:
                if isinstance(exc, Exception):
                    await _abort(context, exc, name)
                raise

        return cast(F, stream_wrapper)

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, name)

    return cast(F, unary_wrapper)
