"""Request-body limits: the node's, the account's (Central's default or its own, carried in
the session) and the DService's (its miners' offers). The smallest binds; a body over it is
refused by the node before any miner sees it, one of exactly the limit passes. Real Central,
node and admin gRPC servers on loopback, a real SQLite database, and miners written from the
protos."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cgn_common.certs import Role
from cgn_common.errors import BodyTooLargeError
from cgn_common.rpc import open_channel
from cgn_common.status import rpc_details
from cgn_common.types import AccountKind, Tier
from cgn_node.limits import DServiceLimits, body_limit, check_body_size
from cgn_node.sessions import SessionClaims
from generated.cgn.admin.v1 import account_admin_service_pb2 as acct_pb
from generated.cgn.admin.v1 import account_admin_service_pb2_grpc as acct_grpc
from generated.cgn.common.v1 import dservice_pb2, http_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc
from generated.cgn.work.v1 import session_service_pb2 as session_pb
from generated.cgn.work.v1 import session_service_pb2_grpc as session_grpc
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers.cluster import Cluster, start_cluster, stop_cluster
from tests.helpers.pki import Pki
from tests.helpers.wait import until

NODE_MAX = 4000
CENTRAL_DEFAULT = 3000
ECHO_LIMIT = 1000


def _claims(max_body_bytes: int = 0) -> SessionClaims:
    return SessionClaims("s", "acct_1", (Tier.TIER_2_DATACENTER,), 0.0, 0, 0, max_body_bytes)


def test_the_smallest_limit_binds_and_zero_means_none() -> None:
    assert body_limit(100, _claims(), 0) == (100, "node")
    assert body_limit(100, _claims(50), 0) == (50, "account")
    assert body_limit(100, _claims(50), 20) == (20, "dservice")
    assert body_limit(100, _claims(500), 200) == (100, "node")
    assert body_limit(100, _claims(50), 50) == (50, "account")  # a tie: the account's
    assert body_limit(100, _claims(100), 0) == (100, "node")


def test_a_body_over_the_limit_is_refused_naming_size_limit_and_whose() -> None:
    check_body_size(20, 100, _claims(50), "echo", 20)  # exactly the limit passes
    with pytest.raises(BodyTooLargeError) as caught:
        check_body_size(21, 100, _claims(50), "echo", 20)
    error = caught.value
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "BODY_TOO_LARGE"
    assert error.retry_after_s is None  # the same body can never pass
    assert error.message == (
        "the request body is 21 bytes, over the limit of DService 'echo' of 20 bytes (dservice)"
    )
    with pytest.raises(BodyTooLargeError, match="21 bytes, over the account's limit of 20"):
        check_body_size(21, 100, _claims(20), "echo", 0)
    with pytest.raises(BodyTooLargeError, match="over this node's limit of 20 bytes"):
        check_body_size(21, 20, _claims(), "echo", 0)


def test_a_dservices_limit_is_the_smallest_its_connected_miners_offer() -> None:
    limits = DServiceLimits()
    assert limits.limit("echo") == 0
    limits.offered("m1", {"echo": 2000, "other": 0})
    limits.offered("m2", {"echo": 1000})
    limits.offered("m3", {"echo": 0})  # no limit of its own: does not lift the others'
    assert (limits.limit("echo"), limits.limit("other")) == (1000, 0)
    limits.withdrawn("m2")
    assert limits.limit("echo") == 2000
    limits.offered("m1", {"echo": 3000})  # offered again: replaces its earlier offers
    assert limits.limit("echo") == 3000
    limits.withdrawn("m1")
    limits.withdrawn("never-offered")
    assert limits.limit("echo") == 0


@dataclass
class OfferingMiner:
    """A miner (written from the protos) that offers DServices with body limits and answers
    each assignment with the size of the body it got."""

    offers: dict[str, int]
    bodies: list[int] = field(default_factory=list)
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, address: str, pki: Pki, miner_id: str, api_key: str) -> None:
        async with open_channel(address, pki.client_only()) as channel:
            call: Any = pb_grpc.MinerLinkServiceStub(channel).Connect()
            hello = pb.MinerHello(
                miner_id=miner_id,
                api_key=api_key,
                dservices=[
                    dservice_pb2.DServiceOffer(name=n, max_body_bytes=limit)
                    for n, limit in self.offers.items()
                ],
                max_concurrent_work_units=4,
            )
            await call.write(pb.ConnectRequest(hello=hello))
            while (message := await call.read()) is not grpc.aio.EOF:
                kind = message.WhichOneof("kind")
                if kind == "welcome":
                    self.welcomed.set()
                elif kind == "assignment":
                    await self._answer(call, message)

    async def _answer(self, call: Any, message: pb.ConnectResponse) -> None:
        assignment = message.assignment
        self.bodies.append(len(assignment.body))
        await call.write(pb.ConnectRequest(response_nonce=message.nonce, ack=pb.Ack()))
        token = assignment.dispatch_token
        response = pb.WorkResponse(
            dispatch_token=token,
            head=http_pb2.HttpResponseHead(status_code=200),
            body=str(len(assignment.body)).encode(),
            body_complete=True,
            completion=pb.WorkCompletion(dispatch_token=token),
        )
        await call.write(pb.ConnectRequest(response_nonce=message.nonce, response=response))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    running = await start_cluster(
        tmp_path,
        Pki.create(tmp_path / "ca"),
        central_options={"default_max_body_bytes": CENTRAL_DEFAULT},
        max_work_body_bytes=NODE_MAX,
    )
    await until(lambda: running.node.central.connected, "the central link")
    yield running
    await stop_cluster(running)


async def _connect(cluster: Cluster, offers: dict[str, int]) -> tuple[OfferingMiner, Any]:
    created = await cluster.central.accounts.create(
        AccountKind.MINER, "m", tier=Tier.TIER_2_DATACENTER
    )
    miner = OfferingMiner(offers)
    task = asyncio.create_task(
        miner.run(
            cluster.endpoints["miner_link"],
            cluster.pki,
            created.account.account_id,
            created.api_key,
        )
    )
    await asyncio.wait_for(miner.welcomed.wait(), 10)
    await until(lambda: len(cluster.node.broker.miners()) > 0, "the miner to join the pool")
    return miner, task


async def _login(cluster: Cluster, account_id: str, api_key: str) -> str:
    async with open_channel(cluster.endpoints["work"], cluster.pki.client_only()) as channel:
        session = await session_grpc.SessionServiceStub(channel).CreateSession(
            session_pb.CreateSessionRequest(account_id=account_id, api_key=api_key), timeout=10
        )
    return str(session.token)


async def _set_limit(cluster: Cluster, account_id: str, max_body_bytes: int) -> acct_pb.Account:
    """Sets an account's limit through Central's admin API, as an operator."""
    operator = cluster.pki.issue(Role.OPERATOR, "ops")
    async with open_channel(cluster.central.admin.address, operator) as channel:
        stub = acct_grpc.AccountAdminServiceStub(channel)
        updated: acct_pb.UpdateAccountResponse = await stub.UpdateAccount(
            acct_pb.UpdateAccountRequest(account_id=account_id, max_body_bytes=max_body_bytes),
            timeout=10,
        )
        got: acct_pb.GetAccountResponse = await stub.GetAccount(
            acct_pb.GetAccountRequest(account_id=account_id), timeout=10
        )
    assert updated.account.max_body_bytes == got.account.max_body_bytes
    return got.account


async def _call(cluster: Cluster, token: str, dservice: str, size: int) -> bytes:
    request = work_pb.CallRequest(
        dservice=dservice,
        head=http_pb2.HttpRequestHead(method="POST", path="/x"),
        body=b"x" * size,
    )
    async with open_channel(cluster.endpoints["work"], cluster.pki.client_only()) as channel:
        response = await work_grpc.WorkServiceStub(channel).Call(
            request, timeout=10, metadata=(("authorization", f"Bearer {token}"),)
        )
    return bytes(response.body)


async def _refused(cluster: Cluster, token: str, dservice: str, size: int) -> str:
    """The message of the BODY_TOO_LARGE refusal a body of ``size`` bytes meets."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(cluster, token, dservice, size)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    reason, retry_after = rpc_details(caught.value)
    assert (reason, retry_after) == ("BODY_TOO_LARGE", None)
    return str(caught.value.details())


async def test_centrals_default_and_an_accounts_own_limit_reach_its_sessions(
    cluster: Cluster,
) -> None:
    enterprise = await cluster.enterprise("e")
    assert cluster.node.issuer.verify(enterprise.token).max_body_bytes == CENTRAL_DEFAULT
    created = await cluster.central.accounts.create(AccountKind.ENTERPRISE, "own")
    account_id = created.account.account_id
    account = await _set_limit(cluster, account_id, 1234)
    assert account.max_body_bytes == 1234
    token = await _login(cluster, account_id, created.api_key)
    assert cluster.node.issuer.verify(token).max_body_bytes == 1234
    account = await _set_limit(cluster, account_id, 0)  # back to Central's default
    assert account.max_body_bytes == 0
    again = await _login(cluster, account_id, created.api_key)
    assert cluster.node.issuer.verify(again).max_body_bytes == CENTRAL_DEFAULT
    assert cluster.node.issuer.verify(token).max_body_bytes == 1234  # kept until it expires


async def test_the_node_refuses_a_body_over_the_binding_limit_before_any_miner(
    cluster: Cluster,
) -> None:
    miner, task = await _connect(cluster, {"echo": ECHO_LIMIT, "plain": 0})
    assert cluster.node.broker.body_limits.limit("echo") == ECHO_LIMIT
    enterprise = await cluster.enterprise("e")  # Central's default, 3000
    # The DService's limit binds on echo; a body of exactly it passes.
    assert await _call(cluster, enterprise.token, "echo", ECHO_LIMIT) == b"1000"
    message = await _refused(cluster, enterprise.token, "echo", ECHO_LIMIT + 1)
    assert message == (
        "the request body is 1001 bytes, over the limit of DService 'echo' of 1000 bytes (dservice)"
    )
    # The account's (Central's default) binds on a DService without a limit.
    assert await _call(cluster, enterprise.token, "plain", CENTRAL_DEFAULT) == b"3000"
    message = await _refused(cluster, enterprise.token, "plain", CENTRAL_DEFAULT + 1)
    assert "3001 bytes, over the account's limit of 3000 bytes (account)" in message
    # An account allowed more than the node takes: the node's binds.
    created = await cluster.central.accounts.create(AccountKind.ENTERPRISE, "big")
    await _set_limit(cluster, created.account.account_id, 10 * NODE_MAX)
    token = await _login(cluster, created.account.account_id, created.api_key)
    assert await _call(cluster, token, "plain", NODE_MAX) == b"4000"
    message = await _refused(cluster, token, "plain", NODE_MAX + 1)
    assert "4001 bytes, over this node's limit of 4000 bytes (node)" in message
    # An account's own limit below the DService's binds.
    small = await cluster.central.accounts.create(
        AccountKind.ENTERPRISE, "small", max_body_bytes=500
    )
    token = await _login(cluster, small.account.account_id, small.api_key)
    assert await _call(cluster, token, "echo", 500) == b"500"
    assert "(account)" in await _refused(cluster, token, "echo", 501)
    assert miner.bodies == [ECHO_LIMIT, CENTRAL_DEFAULT, NODE_MAX, 500]  # no refused one
    task.cancel()


async def test_a_dservices_limit_follows_the_miners_connected_now(cluster: Cluster) -> None:
    _, strict = await _connect(cluster, {"echo": 1000})
    _, lax = await _connect(cluster, {"echo": 2000})
    await until(lambda: len(cluster.node.broker.miners()) == 2, "both miners in the pool")
    assert cluster.node.broker.body_limits.limit("echo") == 1000
    strict.cancel()
    await until(lambda: len(cluster.node.broker.miners()) == 1, "the strict miner to leave")
    assert cluster.node.broker.body_limits.limit("echo") == 2000
    enterprise = await cluster.enterprise("e")
    assert await _call(cluster, enterprise.token, "echo", 2000) == b"2000"
    assert "of 2000 bytes (dservice)" in await _refused(cluster, enterprise.token, "echo", 2001)
    lax.cancel()
    await until(lambda: not cluster.node.broker.miners(), "the other miner to leave")
    assert cluster.node.broker.body_limits.limit("echo") == 0


async def _stream(
    cluster: Cluster, token: str, size: int, *, declared: bool, end_of_body: bool
) -> bytes:
    """A CallStream of a ``size``-byte body to echo that closes its side after the body, with
    or without ``head.content_length`` and the last chunk's ``end_of_body``; the answer."""
    head = http_pb2.HttpRequestHead(method="POST", path="/x")
    if declared:
        head.content_length = size
    start = work_pb.CallStart(dservice="echo", head=head)
    chunk = http_pb2.BodyChunk(data=b"x" * size, end_of_body=end_of_body)
    requests = [work_pb.CallStreamRequest(start=start)]
    if size or end_of_body:
        requests.append(work_pb.CallStreamRequest(body=chunk))
    async with open_channel(cluster.endpoints["work"], cluster.pki.client_only()) as channel:
        call: Any = work_grpc.WorkServiceStub(channel).CallStream(
            iter(requests), timeout=10, metadata=(("authorization", f"Bearer {token}"),)
        )
        return b"".join([m.body.data async for m in call])


async def test_a_stream_that_ends_without_end_of_body_or_a_length_is_never_run(
    cluster: Cluster,
) -> None:
    """A caller that cancels mid-upload ends the node's reads like one that closed its side
    (grpc.aio), so a body that ends without end_of_body counts as whole only when the head
    declared its length; otherwise it may be cut and no miner gets it (a stress run saw the
    gateway's cancel reach a scripted node as the end of the stream)."""
    miner, task = await _connect(cluster, {"echo": 0})
    enterprise = await cluster.enterprise("e")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stream(cluster, enterprise.token, 100, declared=False, end_of_body=False)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "without end_of_body" in str(caught.value.details())
    assert miner.bodies == []
    # A declared length, or end_of_body, makes the same stream whole.
    assert await _stream(cluster, enterprise.token, 100, declared=True, end_of_body=False) == b"100"
    assert await _stream(cluster, enterprise.token, 70, declared=False, end_of_body=True) == b"70"
    # No chunk at all: a request without a body (a GET), run.
    assert await _stream(cluster, enterprise.token, 0, declared=False, end_of_body=False) == b"0"
    assert miner.bodies == [100, 70, 0]
    task.cancel()
