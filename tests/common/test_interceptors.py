"""The authorization table and error translation, on a real server on loopback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cgn_common.certs import Role
from cgn_common.rpc import GrpcServer, open_channel
from cgn_common.tasks import Supervisor
from cgn_common.tls import ClientAuth
from cgn_node._rpc import Sessions, Work
from cgn_node.broker import Broker
from cgn_node.recorder import LogRecorder
from cgn_node.server import SESSION_SERVICE, WORK_RULES, WORK_SERVICE
from cgn_node.sessions import SessionIssuer
from generated.cgn.work.v1 import session_service_pb2 as session_pb
from generated.cgn.work.v1 import session_service_pb2_grpc as session_grpc
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers.pki import Pki


class _Central:
    async def verify_credential(self, *args: Any) -> Any:
        raise ValueError("injected: a bug in the servicer's dependency")


def _raw(method: str) -> grpc.RpcMethodHandler:
    async def handler(request: bytes, context: Any) -> bytes:
        return b"secret data"

    return grpc.unary_unary_rpc_method_handler(handler)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Pki]]:
    pki = Pki.create(tmp_path)
    server = GrpcServer(
        "test-work",
        pki.issue(Role.NODE, "n1"),
        ClientAuth.NONE,
        WORK_RULES,  # the node's real table for its work port
        SessionIssuer(b"k" * 32, 60, "n1").verify,
    )
    server.add(
        session_grpc.add_SessionServiceServicer_to_server,
        Sessions(SessionIssuer(b"k" * 32, 60, "n1"), _Central()),  # type: ignore[arg-type]
        SESSION_SERVICE,
    )
    server.add(
        work_grpc.add_WorkServiceServicer_to_server,
        Work(Broker(), LogRecorder(), "n1", Supervisor("test")),
        WORK_SERVICE,
    )
    # An RPC added to an existing service without adding a rule for it.
    server.add_handlers(
        grpc.method_handlers_generic_handler(
            SESSION_SERVICE.removeprefix("/"), {"ListAllSessions": _raw("ListAllSessions")}
        )
    )
    address = await server.start("127.0.0.1:0")
    yield address, pki
    await server.stop(0)


async def _call(address: str, pki: Pki, method: str, request: bytes) -> grpc.StatusCode:
    async with open_channel(address, pki.client_only()) as channel:
        call = channel.unary_unary(method)
        try:
            await call(request, timeout=5)
        except grpc.aio.AioRpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


async def test_an_rpc_without_an_authorization_entry_is_refused(
    server: tuple[str, Pki],
) -> None:
    address, pki = server
    method = f"/{SESSION_SERVICE}/ListAllSessions"
    assert await _call(address, pki, method, b"") is grpc.StatusCode.PERMISSION_DENIED


async def test_a_session_method_without_a_token_is_unauthenticated(
    server: tuple[str, Pki],
) -> None:
    address, pki = server
    code = await _call(address, pki, "/cgn.work.v1.WorkService/Call", b"")
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_an_unexpected_exception_is_internal_without_internals(
    server: tuple[str, Pki], caplog: pytest.LogCaptureFixture
) -> None:
    address, pki = server
    request = session_pb.CreateSessionRequest(account_id="a", api_key="k").SerializeToString()
    with caplog.at_level(logging.ERROR):
        async with open_channel(address, pki.client_only()) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await channel.unary_unary(f"/{SESSION_SERVICE}/CreateSession")(request, timeout=5)
    assert raised.value.code() is grpc.StatusCode.INTERNAL
    assert "injected" not in (raised.value.details() or "")
    logged = [r for r in caplog.records if r.getMessage() == "rpc_internal_error"]
    assert logged
    assert logged[0].exc_info is not None
