"""A gRPC client that skips the gateway gets the same checks: CR, LF or NUL in a header, a
method that is not a token and a control character in the path are INVALID_ARGUMENT from the
node, and the DService never sees them (the shared sandbox's echo journals every request it
gets; a good request in the same run shows up there, so the journal is read right)."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest

from cgn_common.rpc import open_channel
from generated.cgn.common.v1 import http_pb2
from generated.cgn.work.v1 import work_pb2
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers import journal
from tests.helpers.sandbox import RunningSandbox

BAD: dict[str, tuple[str, str, str, list[tuple[str, bytes]]]] = {
    "cr-lf-in-header": ("GET", "/x", "", [("X-A", b"v\r\nX-Injected: 1")]),
    "lf-in-header": ("GET", "/x", "", [("X-A", b"v\nX-Injected: 1")]),
    "nul-in-header": ("GET", "/x", "", [("X-A", b"v\x00w")]),
    "cr-in-header-name": ("GET", "/x", "", [("X-A\r\nX-B", b"v")]),
    "bad-method": ("GE T", "/x", "", []),
    "method-with-crlf": ("GET /evil HTTP/1.1\r\n", "/x", "", []),
    "control-in-path": ("GET", "/a\x01b", "", []),
    "crlf-in-path": ("GET", "/a\r\nHost: evil", "", []),
    "space-in-path": ("GET", "/a b", "", []),
    "nul-in-query": ("GET", "/x", "a=\x00", []),
    "length-mismatch": ("POST", "/x", "", [("Content-Length", b"99")]),
}


def _call(
    method: str, path: str, query: str, headers: list[tuple[str, bytes]], rid: str
) -> work_pb.CallRequest:
    return work_pb.CallRequest(
        dservice="echo",
        head=http_pb2.HttpRequestHead(
            method=method,
            path=path,
            query=query,
            headers=[http_pb2.HttpHeader(name=n, value=v) for n, v in headers],
        ),
        body=b"body",
        options=work_pb2.WorkOptions(request_id=rid),
    )


async def test_what_http_forbids_is_refused_by_the_node_before_any_dservice(
    sandbox: RunningSandbox,
) -> None:
    token = await sandbox.session_token()
    run = uuid.uuid4().hex[:10]
    work_address = sandbox.info["processes"]["node"]["endpoints"]["work"]
    metadata = (("authorization", f"Bearer {token}"),)
    async with open_channel(work_address, sandbox.tls()) as channel:
        stub = work_grpc.WorkServiceStub(channel)
        for case, (method, path, query, headers) in BAD.items():
            request = _call(method, path, query, headers, f"bad-{run}-{case}")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Call(request, timeout=10, metadata=metadata)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, case
        good = await stub.Call(
            _call("POST", "/ok", "a=1", [("X-A", b"caf\xe9")], f"good-{run}"),
            timeout=10,
            metadata=metadata,
        )
    assert good.head.status_code == 200
    assert good.body == b"body"
    directory = sandbox.state_dir.parent / "journal"
    deadline = time.monotonic() + 10
    while f"good-{run}" not in journal.by_request(directory, "start"):
        assert time.monotonic() < deadline, "the good request never reached echo"
        await asyncio.sleep(0.05)
    seen = journal.by_request(directory, "start")
    assert not [rid for rid in seen if rid.startswith(f"bad-{run}-")]
