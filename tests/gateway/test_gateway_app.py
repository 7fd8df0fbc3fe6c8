"""The gateway in process against a scripted node (a real gRPC server with mutual TLS):
request ids, deadlines, cancellation and the error table, with no sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cgn_common.errors import (
    AccountLimitError,
    CgnError,
    DServiceFailedError,
    UnavailableError,
)
from generated.cgn.common.v1 import http_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers.gateway import gateway_before
from tests.helpers.pki import Pki
from tests.helpers.wait import until

_ERRORS: dict[str, CgnError] = {
    "/limit": AccountLimitError("too much in flight"),
    "/dservice-failed": DServiceFailedError("bad answer"),
    "/budget": UnavailableError("no luck", reason="RETRY_BUDGET_EXHAUSTED"),
    "/no-miner": UnavailableError("nobody", reason="NO_ELIGIBLE_MINER"),
}


@dataclass
class ScriptedNode(work_grpc.WorkServiceServicer):
    """Answers by path: an error from _ERRORS, a hang on /hang, else the request's facts."""

    calls: list[work_pb.CallRequest] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def Call(  # noqa: N802
        self, request: work_pb.CallRequest, context: Any
    ) -> work_pb.CallResponse:
        self.calls.append(request)
        if request.head.path in _ERRORS:
            raise _ERRORS[request.head.path]
        if request.head.path == "/hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        remaining = context.time_remaining()
        head = http_pb2.HttpResponseHead(
            status_code=200,
            headers=[http_pb2.HttpHeader(name="X-Deadline-Ms", value=b"%d" % (remaining * 1000))],
        )
        return work_pb.CallResponse(head=head, body=request.options.request_id.encode())


@dataclass
class Gateway:
    url: str
    node: ScriptedNode


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    scripted = ScriptedNode()  # type: ignore[abstract]
    async with gateway_before(scripted, Pki.create(tmp_path), request_timeout_s=20) as url:
        yield Gateway(url, scripted)


async def _get(
    gw: Gateway, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{gw.url}/v1/dservices/echo{path}",
            headers={"Authorization": "Bearer t", **(headers or {})},
        ) as response,
    ):
        if response.headers.get("X-CGN-Error"):
            return response.status, await response.json(), response.headers.copy()
        return response.status, await response.read(), response.headers.copy()


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/limit", 429, "ACCOUNT_IN_FLIGHT_LIMIT"),
        ("/dservice-failed", 502, "DSERVICE_FAILED"),
        ("/budget", 504, "RETRY_BUDGET_EXHAUSTED"),
        ("/no-miner", 503, "NO_ELIGIBLE_MINER"),
    ],
)
async def test_node_reasons_choose_the_http_status(
    gateway: Gateway, path: str, status: int, reason: str
) -> None:
    got, body, headers = await _get(gateway, path, {"X-Request-Id": "r-1"})
    assert got == status
    assert body["error"]["reason"] == reason
    assert headers["X-Request-Id"] == "r-1"
    if status in (429, 503):
        assert headers["Retry-After"] == "1"


async def test_request_ids_are_kept_when_valid_and_made_when_not(gateway: Gateway) -> None:
    status, body, headers = await _get(gateway, "/ok", {"X-Request-Id": "mine.1_2-3"})
    assert status == 200
    assert body == b"mine.1_2-3"
    assert headers["X-Request-Id"] == "mine.1_2-3"
    status, body, headers = await _get(gateway, "/ok", {"X-Request-Id": "bad id!"})
    assert headers["X-Request-Id"].startswith("req_")
    assert body == headers["X-Request-Id"].encode()
    forwarded = {h.name.lower() for h in gateway.node.calls[-1].head.headers}
    assert "x-request-id" not in forwarded  # travels as the request id, not twice


async def test_the_dapps_timeout_becomes_the_deadline_capped_by_the_gateway(
    gateway: Gateway,
) -> None:
    _, _, headers = await _get(gateway, "/ok", {"X-CGN-Timeout-Ms": "1500"})
    assert 0 < int(headers["X-Deadline-Ms"]) <= 1550
    _, _, headers = await _get(gateway, "/ok", {"X-CGN-Timeout-Ms": "3600000"})
    assert 15_000 < int(headers["X-Deadline-Ms"]) <= 20_500  # gRPC rounds timeouts up
    status, body, _ = await _get(gateway, "/ok", {"X-CGN-Timeout-Ms": "soon"})
    assert status == 400
    assert body["error"]["code"] == "INVALID_ARGUMENT"


async def test_a_dapp_that_disconnects_cancels_the_nodes_call(gateway: Gateway) -> None:
    call = asyncio.create_task(_get(gateway, "/hang"))
    await until(lambda: any(c.head.path == "/hang" for c in gateway.node.calls), "the call")
    call.cancel()
    await asyncio.wait_for(gateway.node.cancelled.wait(), 5)


async def test_a_deadline_is_504_json(gateway: Gateway) -> None:
    status, body, _ = await _get(gateway, "/hang", {"X-CGN-Timeout-Ms": "200"})
    assert status == 504
    assert body["error"]["code"] == "DEADLINE_EXCEEDED"
