"""The gateway's gRPC client of the node (SessionService, WorkService, LedgerService)."""

from __future__ import annotations

from typing import Any

import grpc

from cgn_common.rpc import CHANNEL_OPTIONS
from cgn_common.tls import ReloadingChannel, TlsConfig
from generated.cgn.common.v1 import http_pb2
from generated.cgn.ledger.v1 import ledger_service_pb2 as ledger_pb
from generated.cgn.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from generated.cgn.work.v1 import session_service_pb2 as session_pb
from generated.cgn.work.v1 import session_service_pb2_grpc as session_grpc
from generated.cgn.work.v1 import work_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc


class NodeClient:
    """One channel to the node's internal port (mutual TLS), shared by every request and
    replaced when the gateway's certificate files rotate."""

    def __init__(self, address: str, tls: TlsConfig) -> None:
        self._channel = ReloadingChannel(address, tls, CHANNEL_OPTIONS)
        self._generation = -1
        self._stubs()

    def _stubs(self) -> None:
        channel = self._channel.get()
        if self._generation != self._channel.generation:
            self._generation = self._channel.generation
            self._sessions = session_grpc.SessionServiceStub(channel)
            self._work = work_grpc.WorkServiceStub(channel)
            self._ledger = ledger_grpc.LedgerServiceStub(channel)

    async def create_session(
        self, account_id: str, api_key: str, timeout_s: float, client_address: str = ""
    ) -> tuple[str, float]:
        """Opens a session for a DApp at ``client_address``; returns (token, expires_at as
        Unix seconds). The node throttles failed logins per address."""
        self._stubs()
        response: session_pb.CreateSessionResponse = await self._sessions.CreateSession(
            session_pb.CreateSessionRequest(account_id=account_id, api_key=api_key),
            timeout=timeout_s,
            metadata=(("x-cgn-client-address", client_address),) if client_address else None,
        )
        return response.token, response.expires_at.ToMicroseconds() / 1e6

    async def list_rows(
        self, request: ledger_pb.ListRowsRequest, timeout_s: float
    ) -> ledger_pb.ListRowsResponse:
        """A page of the node's public ledger rows."""
        self._stubs()
        response: ledger_pb.ListRowsResponse = await self._ledger.ListRows(
            request, timeout=timeout_s
        )
        return response

    async def rows_by_request(
        self, token: str, request_id: str, timeout_s: float
    ) -> ledger_pb.ListRowsByRequestResponse:
        """The caller's own rows of one request id, with their private columns."""
        self._stubs()
        response: ledger_pb.ListRowsByRequestResponse = await self._ledger.ListRowsByRequest(
            ledger_pb.ListRowsByRequestRequest(request_id=request_id),
            timeout=timeout_s,
            metadata=(("authorization", f"Bearer {token}"),),
        )
        return response

    async def revoke_session(self, token: str, timeout_s: float) -> bool:
        """Revokes the session ``token`` on every node; False when it was not valid."""
        self._stubs()
        response: session_pb.RevokeSessionResponse = await self._sessions.RevokeSession(
            session_pb.RevokeSessionRequest(token=token), timeout=timeout_s
        )
        return response.revoked

    async def call(
        self,
        token: str,
        dservice: str,
        head: http_pb2.HttpRequestHead,
        body: bytes,
        timeout_s: float,
        request_id: str = "",
    ) -> work_pb.CallResponse:
        """Runs one request whose body is at hand; an answer the DService streams comes back
        as its head and an ``answer_token`` (read the rest with :meth:`read_answer`)."""
        self._stubs()
        request = work_pb.CallRequest(
            dservice=dservice,
            head=head,
            body=body,
            options=work_options(request_id, timeout_s, stream_answers=True),
        )
        # The gRPC deadline ends the unary call at the answer's head (a streamed body is
        # read afterwards with read_answer).
        response: work_pb.CallResponse = await self._work.Call(
            request, timeout=timeout_s, metadata=_bearer(token)
        )
        return response

    def read_answer(self, token: str, answer_token: str) -> Any:
        """The rest of a streamed answer: a ``ReadAnswer`` call, its messages read with
        ``read()`` (cancel it to stop). No deadline: the body takes as long as it flows."""
        self._stubs()
        return self._work.ReadAnswer(
            work_pb.ReadAnswerRequest(answer_token=answer_token), metadata=_bearer(token)
        )

    def call_stream(self, token: str) -> Any:
        """A ``CallStream`` call, for a request body that streams in: write its start (with
        :func:`work_options`) and body, read its answer. No gRPC deadline: the work's own
        (``WorkOptions.timeout``) runs from its dispatch to the answer's head, and the
        bodies take as long as they flow."""
        self._stubs()
        return self._work.CallStream(metadata=_bearer(token))

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()


def _bearer(token: str) -> grpc.aio.Metadata:
    # grpc.aio's own type: a tuple it would convert on every call.
    return grpc.aio.Metadata(("authorization", f"Bearer {token}"))


def work_options(
    request_id: str, timeout_s: float, *, stream_answers: bool = False
) -> work_pb2.WorkOptions:
    """The options of a DApp's request: its id, and its deadline as the work's timeout."""
    options = work_pb2.WorkOptions(request_id=request_id, stream_answers=stream_answers)
    options.timeout.FromMilliseconds(max(1, int(timeout_s * 1000)))
    return options
