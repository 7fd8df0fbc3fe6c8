"""The node's miner link with scripted miners written from the protos, over a real gRPC
stream with TLS: correlation, leases, deadlines, cancels and blame."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cgn_common.certs import Role
from cgn_common.errors import DeadlineExceededError, DServiceFailedError, UnauthenticatedError
from cgn_common.rpc import open_channel
from cgn_common.streams import BODY_CHUNK_BYTES, StreamWriter
from cgn_common.types import AccountKind, Tier
from cgn_node._miner_link import MinerConnection, MinerLink
from cgn_node.broker import MinerFailedError, MinerRefusedError
from cgn_node.work import HttpRequest, ResponseBody, WorkUnit
from generated.cgn.admin.v1 import account_admin_service_pb2 as acct_pb
from generated.cgn.admin.v1 import account_admin_service_pb2_grpc as acct_grpc
from generated.cgn.common.v1 import dservice_pb2, http_pb2, resources_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc
from generated.cgn.work.v1 import work_pb2 as work_types_pb
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from settlement.ledger import decode_pairs
from tests.helpers.cluster import Cluster, start_cluster, stop_cluster
from tests.helpers.pki import Pki
from tests.helpers.wait import until

LEASE_MS = 400
ACK_DEADLINE_S = 0.3


@dataclass
class ScriptedMiner:
    """A miner that does what its ``behaviour`` says with each assignment."""

    miner_id: str
    # "answer", "chunks", "silent", "heartbeat", "fail", "wrong-nonce", "reports-on-cancel"
    # (heartbeats, and answers a cancel with its usage so far, as the real miner does), or
    # "exchange" (takes the body and answers on the dispatch's data plane: the body
    # reversed, so that a wrong or reordered slice shows), or "batching" (lists the "batch"
    # feature, sends no Ack and answers with its WorkSlots in one MinerBatch)
    behaviour: str
    assignments: list[pb.WorkAssignment] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    ended: str = ""
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    assigned: asyncio.Event = field(default_factory=asyncio.Event)
    _work_ids: dict[str, str] = field(default_factory=dict)
    api_key: str = ""
    #: The sizes of the body slices the node sent on data planes.
    slices: list[int] = field(default_factory=list)
    #: The size of every NodeBatch received, and the Welcome's features.
    batches: list[int] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    _stub: Any = None
    #: One write at a time on the stream (units answered at once would write concurrently).
    _writing: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self, address: str, pki: Pki, api_key: str) -> None:
        async with open_channel(address, pki.client_only()) as channel:
            self._stub = pb_grpc.MinerLinkServiceStub(channel)
            call: Any = self._stub.Connect()
            hello = pb.MinerHello(
                miner_id=self.miner_id,
                api_key=api_key,
                dservices=[dservice_pb2.DServiceOffer(name="echo")],
                max_concurrent_work_units=4,
                features=["batch"] if self.behaviour == "batching" else [],
            )
            await call.write(pb.ConnectRequest(hello=hello))
            tasks: set[asyncio.Task[None]] = set()
            try:
                while (received := await call.read()) is not grpc.aio.EOF:
                    if received.WhichOneof("kind") == "batch":
                        self.batches.append(len(received.batch.messages))
                    for message in received.batch.messages or (received,):
                        await self._on_message(call, message, tasks)
                self.ended = "EOF"
            except grpc.aio.AioRpcError as exc:
                self.ended = exc.code().name
            finally:
                for task in tasks:
                    task.cancel()

    async def _on_message(
        self, call: Any, message: pb.ConnectResponse, tasks: set[asyncio.Task[None]]
    ) -> None:
        kind = message.WhichOneof("kind")
        if kind == "welcome":
            self.features = list(message.welcome.features)
            self.welcomed.set()
        elif kind == "cancel":
            token = message.cancel.dispatch_token
            self.cancels.append(self._work_ids.get(token, token))
            if self.behaviour == "reports-on-cancel":
                done = pb.WorkCompletion(dispatch_token=token)
                done.usage.cpu_time.FromMicroseconds(250_000)
                done.usage.wall_time.FromMicroseconds(900_000)
                done.usage.cpu_time_metering = resources_pb2.METERING_METHOD_ISOLATED
                done.usage.bytes_in = 7
                await call.write(pb.ConnectRequest(response_nonce=message.nonce, completion=done))
        elif kind == "assignment":
            self.assignments.append(message.assignment)
            self.assigned.set()
            task = asyncio.create_task(self._work(call, message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def _answer(self, work_id: str) -> pb.WorkResponse:
        """A whole 200 answer whose body is this miner's id."""
        return pb.WorkResponse(
            dispatch_token=work_id,
            head=http_pb2.HttpResponseHead(status_code=200),
            body=self.miner_id.encode(),
            body_complete=True,
            completion=pb.WorkCompletion(dispatch_token=work_id),
        )

    async def _work(self, call: Any, message: pb.ConnectResponse) -> None:
        work_id = message.assignment.dispatch_token
        self._work_ids[work_id] = message.assignment.work_id
        nonce = "not-the-nonce" if self.behaviour == "wrong-nonce" else message.nonce
        if self.behaviour == "frozen-machine":
            # The whole machine stalls past the ack deadline (this process: node and miner
            # alike), then the miner acks at once after it.
            time.sleep(3 * ACK_DEADLINE_S)  # noqa: ASYNC251 - the stall is the point
            await asyncio.sleep(0.05)
        elif self.behaviour == "busy-stream":
            # Other messages of the miner's come first; its ack comes after the deadline.
            await asyncio.sleep(ACK_DEADLINE_S * 2 / 3)
            await call.write(pb.ConnectRequest(slots=pb.WorkSlots(free=3)))
            await asyncio.sleep(ACK_DEADLINE_S * 2 / 3)
        if self.behaviour == "batching":  # no Ack: the answer acknowledges the assignment
            answer = pb.ConnectRequest(response_nonce=message.nonce, response=self._answer(work_id))
            slots = pb.ConnectRequest(response_nonce=message.nonce, slots=pb.WorkSlots(free=4))
            async with self._writing:
                await call.write(pb.ConnectRequest(batch=pb.MinerBatch(messages=[answer, slots])))
            return
        await call.write(pb.ConnectRequest(response_nonce=nonce, ack=pb.Ack()))
        if self.behaviour in ("answer", "frozen-machine", "busy-stream"):
            response = self._answer(work_id)
            await call.write(pb.ConnectRequest(response_nonce=message.nonce, response=response))
        elif self.behaviour == "chunks":
            head = http_pb2.HttpResponseHead(status_code=201)
            first = pb.WorkResponse(
                dispatch_token=work_id, head=head, body=b"one,", body_complete=False
            )
            await call.write(pb.ConnectRequest(response_nonce=message.nonce, response=first))
            for part in (b"two,", b"three"):
                chunk = pb.ConnectRequest(response_nonce=message.nonce)
                chunk.response_body.dispatch_token = work_id
                chunk.response_body.data = part
                await call.write(chunk)
            done = pb.WorkCompletion(dispatch_token=work_id)
            done.usage.wall_time.FromMicroseconds(1234)
            await call.write(pb.ConnectRequest(response_nonce=message.nonce, completion=done))
        elif self.behaviour == "fail":
            failure = pb.WorkFailure(dispatch_token=work_id)
            failure.status.code = 14
            failure.status.message = "DService answered with garbage"
            await call.write(pb.ConnectRequest(response_nonce=message.nonce, failure=failure))
        elif self.behaviour == "exchange":
            assignment = message.assignment
            assert not assignment.body_complete
            assert assignment.body == b""
            plane: Any = self._stub.Exchange()
            await plane.write(pb.ExchangeRequest(open=pb.ExchangeOpen(dispatch_token=work_id)))
            parts = []
            while True:
                got = await plane.read()
                parts.append(got.request_body.data)
                self.slices.append(len(got.request_body.data))
                if got.request_body.end_of_body:
                    break
            body = b"".join(parts)[::-1]
            assert len(body) == assignment.body_size
            first = pb.WorkResponse(
                dispatch_token=work_id,
                head=http_pb2.HttpResponseHead(status_code=200),
                body_complete=False,
            )
            await plane.write(pb.ExchangeRequest(response=first))
            for start in range(0, len(body), 100_000):
                piece = pb.ResponseBodyChunk(
                    dispatch_token=work_id, data=body[start : start + 100_000]
                )
                await plane.write(pb.ExchangeRequest(response_body=piece))
            done = pb.WorkCompletion(dispatch_token=work_id)
            done.usage.bytes_in = len(body)
            await plane.write(pb.ExchangeRequest(completion=done))
            await plane.done_writing()
            assert await plane.read() is grpc.aio.EOF
        elif self.behaviour == "streams-then-dies":
            plane = self._stub.Exchange()
            await plane.write(pb.ExchangeRequest(open=pb.ExchangeOpen(dispatch_token=work_id)))
            first = pb.WorkResponse(
                dispatch_token=work_id,
                head=http_pb2.HttpResponseHead(status_code=200),
                body_complete=False,
            )
            await plane.write(pb.ExchangeRequest(response=first))
            for n in range(2):
                piece = pb.ResponseBodyChunk(dispatch_token=work_id, data=b"part %d;" % n)
                await plane.write(pb.ExchangeRequest(response_body=piece))
            self.assigned.set()
            await asyncio.Event().wait()  # until the test kills this miner
        elif self.behaviour in ("heartbeat", "reports-on-cancel"):
            while True:
                await asyncio.sleep(LEASE_MS / 3000)
                progress = pb.WorkProgress(dispatch_token=work_id)
                await call.write(pb.ConnectRequest(response_nonce=message.nonce, progress=progress))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    running = await start_cluster(
        tmp_path,
        Pki.create(tmp_path / "ca"),
        lease_ms=LEASE_MS,
        ack_deadline_ms=int(ACK_DEADLINE_S * 1000),
    )
    await until(lambda: running.node.central.connected, "the central link")
    yield running
    await stop_cluster(running)


async def _connect(cluster: Cluster, behaviour: str) -> tuple[ScriptedMiner, asyncio.Task[None]]:
    created = await cluster.central.accounts.create(
        AccountKind.MINER, behaviour, tier=Tier.TIER_2_DATACENTER
    )
    miner = ScriptedMiner(created.account.account_id, behaviour, api_key=created.api_key)
    task = asyncio.create_task(
        miner.run(cluster.endpoints["miner_link"], cluster.pki, created.api_key)
    )
    await asyncio.wait_for(miner.welcomed.wait(), 10)
    # The node puts a miner in the pool right after writing its Welcome.
    await until(
        lambda: miner.miner_id in {m.miner_id for m in cluster.node.broker.miners()},
        "the miner to join the pool",
    )
    return miner, task


def _unit(work_id: str, deadline_s: float = 30, body: bytes = b"") -> WorkUnit:
    return WorkUnit(
        work_id,
        "echo",
        "acct_enterprise",
        (Tier.TIER_2_DATACENTER,),
        HttpRequest("POST" if body else "GET", "/x", "", (), body),
        request_id=f"req-{work_id}",
        deadline=time.monotonic() + deadline_s,
    )


async def test_a_silent_miner_is_cancelled_dropped_and_the_work_redispatched(
    cluster: Cluster,
) -> None:
    silent, silent_task = await _connect(cluster, "silent")
    submitted = asyncio.create_task(cluster.node.broker.submit(_unit("w1")))
    await asyncio.wait_for(silent.assigned.wait(), 5)
    started = time.monotonic()
    good, good_task = await _connect(cluster, "answer")
    outcome = await asyncio.wait_for(submitted, 10)
    assert outcome.miner_id == good.miner_id
    assert outcome.attempts == 2
    assert time.monotonic() - started < LEASE_MS / 1000 + 3
    await until(lambda: silent.ended != "", "the silent miner's stream to end")
    assert silent.ended == "ABORTED"
    assert silent.cancels == ["w1"]
    assert good.assignments[0].attempt == 2
    assert good.assignments[0].request_id == "req-w1"
    assert good.assignments[0].lease.ToMilliseconds() == LEASE_MS
    good_task.cancel()
    silent_task.cancel()


async def test_a_deadline_cancels_the_work_and_keeps_the_miner(cluster: Cluster) -> None:
    busy, task = await _connect(cluster, "heartbeat")
    with pytest.raises(DeadlineExceededError):
        await cluster.node.broker.submit(_unit("w2", deadline_s=1.5))
    await until(lambda: busy.cancels == ["w2"], "the cancel to reach the miner")
    # Heartbeats kept the lease alive for longer than a lease: the miner was not dropped.
    assert [m.miner_id for m in cluster.node.broker.miners()] == [busy.miner_id]
    assert busy.ended == ""
    task.cancel()


async def test_abandoned_work_is_billed_for_the_usage_its_miner_reports_on_cancel(
    cluster: Cluster,
) -> None:
    miner, task = await _connect(cluster, "reports-on-cancel")
    alice = await cluster.enterprise("alice")
    async with open_channel(cluster.endpoints["work"], cluster.pki.client_only()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await work_grpc.WorkServiceStub(channel).Call(
                work_pb.CallRequest(
                    dservice="echo",
                    head=http_pb2.HttpRequestHead(method="GET", path="/slow"),
                    options=work_types_pb.WorkOptions(request_id="abandoned-1"),
                ),
                metadata=alice.bearer,
                timeout=1.0,  # the deadline passes while the miner works
            )
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await until(lambda: miner.cancels != [], "the cancel to reach the miner")
    ledger = cluster.node.ledger
    assert ledger is not None
    await until(lambda: ledger.store.by_request("abandoned-1") != [], "the abandoned row")
    (row,) = ledger.store.by_request("abandoned-1")
    public, private = row.public, decode_pairs(row.private_fields)
    assert public["outcome"] == b"abandoned"
    assert public["contributor"] != b""  # the miner's pseudonym: it is paid its share
    assert int.from_bytes(private["cpu_time_us"], "big") == 250_000  # as the miner reported
    assert int.from_bytes(private["bytes_in"], "big") == 7
    assert int.from_bytes(public["fee_atto"], "big") > 0  # billed for what it used
    task.cancel()


async def test_abandoned_work_whose_miner_is_lost_is_recorded_unbilled(cluster: Cluster) -> None:
    busy, task = await _connect(cluster, "heartbeat")  # never reports on cancel
    unit = _unit("w5", deadline_s=1.0)
    with pytest.raises(DeadlineExceededError):
        await cluster.node.broker.submit(unit)
    assert unit.cancelled is not None
    assert unit.cancelled.miner_id == busy.miner_id
    assert not unit.cancelled.usage.done()
    task.cancel()  # the miner goes away before reporting: the report fails, nothing hangs
    with pytest.raises(MinerFailedError):
        await asyncio.wait_for(unit.cancelled.usage, 10)


async def test_a_large_body_travels_on_the_dispatchs_data_plane_both_ways(
    cluster: Cluster,
) -> None:
    miner, task = await _connect(cluster, "exchange")
    body = bytes(range(256)) * 12_289  # ~3 MiB, not a multiple of a slice
    outcome = await asyncio.wait_for(cluster.node.broker.submit(_unit("w6", body=body)), 20)
    assert outcome.result.body == body[::-1]  # every slice, in order, both ways
    assert outcome.result.usage.bytes_in == len(body)
    (assigned,) = miner.assignments
    assert assigned.body == b""
    assert assigned.body_size == len(body)
    assert len(miner.slices) == -(-len(body) // BODY_CHUNK_BYTES)
    assert max(miner.slices) == BODY_CHUNK_BYTES
    task.cancel()


async def test_a_streamed_answer_cut_by_a_dead_miner_fails_and_never_looks_complete(
    cluster: Cluster,
) -> None:
    _, task = await _connect(cluster, "streams-then-dies")
    unit = _unit("w7")
    unit.stream = ResponseBody()
    outcome = await asyncio.wait_for(cluster.node.broker.submit(unit), 10)
    assert unit.stream.started  # the head came, and with it the end of re-dispatch
    assert outcome.result.status == 200
    received: list[bytes] = []

    async def read_all(stream: ResponseBody) -> None:
        async for piece in stream.slices():
            received.append(piece)
            if len(received) == 2:
                task.cancel()  # the miner dies after two slices

    with pytest.raises(MinerFailedError, match="lost mid-answer"):
        await asyncio.wait_for(read_all(unit.stream), 10)
    assert received == [b"part 0;", b"part 1;"]
    assert outcome.attempts == 1  # not re-dispatched after the first byte (SPEC 15)


async def test_a_data_plane_needs_a_dispatch_token_in_flight(cluster: Cluster) -> None:
    async with open_channel(cluster.endpoints["miner_link"], cluster.pki.client_only()) as channel:
        plane: Any = pb_grpc.MinerLinkServiceStub(channel).Exchange()
        await plane.write(pb.ExchangeRequest(open=pb.ExchangeOpen(dispatch_token="d_guessed")))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await plane.read()
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        plane = pb_grpc.MinerLinkServiceStub(channel).Exchange()
        await plane.write(pb.ExchangeRequest(completion=pb.WorkCompletion()))  # no open first
        with pytest.raises(grpc.aio.AioRpcError) as unopened:
            await plane.read()
        assert unopened.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_work_failure_blames_the_dservice_not_the_miner(cluster: Cluster) -> None:
    failing, task = await _connect(cluster, "fail")
    with pytest.raises(DServiceFailedError, match="garbage"):
        await cluster.node.broker.submit(_unit("w3"))
    assert len(failing.assignments) == 1  # not replayed
    assert [m.miner_id for m in cluster.node.broker.miners()] == [failing.miner_id]
    task.cancel()


@pytest.mark.parametrize("behaviour", ["frozen-machine", "busy-stream"])
async def test_a_live_miner_is_not_blamed_for_the_nodes_own_delays(
    cluster: Cluster, behaviour: str
) -> None:
    """An ack the node could not read in time is not the miner's fault: after a stall of the
    node's own loop, or while it is still reading the miner's earlier messages, the miner
    gets its deadline again and stays (a silent one is still dropped: the test above)."""
    miner, task = await _connect(cluster, behaviour)
    began = time.monotonic()
    outcome = await asyncio.wait_for(cluster.node.broker.submit(_unit("w5")), 10)
    assert outcome.miner_id == miner.miner_id
    assert outcome.attempts == 1  # answered by the same dispatch: never declared down
    assert time.monotonic() - began > ACK_DEADLINE_S  # the ack did come after the deadline
    assert [m.miner_id for m in cluster.node.broker.miners()] == [miner.miner_id]
    assert miner.ended == ""
    task.cancel()


async def test_an_ack_with_the_wrong_nonce_is_no_ack(cluster: Cluster) -> None:
    confused, confused_task = await _connect(cluster, "wrong-nonce")
    submitted = asyncio.create_task(cluster.node.broker.submit(_unit("w4")))
    await asyncio.wait_for(confused.assigned.wait(), 5)
    good, good_task = await _connect(cluster, "answer")
    outcome = await asyncio.wait_for(submitted, 10)
    assert outcome.miner_id == good.miner_id
    await until(lambda: confused.ended == "ABORTED", "the confused miner to be dropped")
    good_task.cancel()
    confused_task.cancel()


async def test_a_chunked_answer_is_reassembled_in_order(cluster: Cluster) -> None:
    chunky, task = await _connect(cluster, "chunks")
    outcome = await cluster.node.broker.submit(_unit("w5"))
    assert outcome.result.status == 201
    assert outcome.result.body == b"one,two,three"
    assert outcome.result.usage.wall_time_us == 1234
    assert outcome.miner_id == chunky.miner_id
    task.cancel()


async def _ban(cluster: Cluster, account_id: str) -> None:
    operator = cluster.pki.issue(Role.OPERATOR, "ops")
    address = cluster.central.admin.address
    async with open_channel(address, operator) as channel:
        await acct_grpc.AccountAdminServiceStub(channel).BanAccount(
            acct_pb.BanAccountRequest(account_id=account_id), timeout=10
        )


async def test_a_banned_miner_is_cut_off_at_once_and_refused_on_reconnect(
    cluster: Cluster,
) -> None:
    miner, task = await _connect(cluster, "answer")
    started = time.monotonic()
    await _ban(cluster, miner.miner_id)
    await until(lambda: miner.ended != "", "the banned miner's stream to end", timeout_s=5)
    assert time.monotonic() - started < 1
    assert miner.ended == "ABORTED"
    assert cluster.node.broker.miners() == []
    again = ScriptedMiner(miner.miner_id, "answer")
    await again.run(cluster.endpoints["miner_link"], cluster.pki, miner.api_key)  # right key
    assert again.ended == "UNAUTHENTICATED"
    task.cancel()


async def test_a_banned_accounts_sessions_stop_working_at_once(cluster: Cluster) -> None:
    enterprise = await cluster.central.accounts.create(AccountKind.ENTERPRISE, "e")
    account_id = enterprise.account.account_id
    token, _ = cluster.node.issuer.issue(account_id, (Tier.TIER_2_DATACENTER,))
    assert cluster.node.issuer.verify(token).account_id == account_id
    started = time.monotonic()
    await _ban(cluster, account_id)

    def refused() -> bool:
        try:
            cluster.node.issuer.verify(token)
        except UnauthenticatedError:
            return True
        return False

    await until(refused, "the session to be refused", timeout_s=5)
    assert time.monotonic() - started < 1


def _connection_writing_to(write: Callable[[Any], Awaitable[None]]) -> MinerConnection:
    """A node's connection to one miner whose stream is ``write`` (a scripted peer in
    process)."""
    return MinerConnection(
        StreamWriter(write),
        miner_id="m1",
        tier=Tier.TIER_2_DATACENTER,
        owner_account_id="",
        dservices=frozenset({"echo"}),
        capacity=1,
        ack_deadline_s=0.2,
        lease_s=1.0,
    )


async def test_a_drain_written_to_a_stream_closing_under_it_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A miner leaving as the node stops: writing its Drain fails inside grpc (an
    ExecuteBatchError, seen when a sandbox stopped); the node logs it and goes on stopping
    (it once raised out of Node.stop and left every listener unstopped)."""

    async def closing(message: Any) -> None:
        raise grpc.aio.InternalError('Failed "execute_batch"')

    miner = _connection_writing_to(closing)
    with caplog.at_level(logging.INFO):
        await asyncio.wait_for(miner.drain(1.0), 5)
    assert "drain_unacknowledged" in caplog.text


async def test_an_answer_that_came_just_before_the_cancel_is_billed_at_once() -> None:
    """The node cancels a dispatch whose whole answer it has already read (the caller left
    in the same instant): the miner will report nothing more, so the usage of that answer is
    what the abandoned work is billed for, at once, never a 5 s wait and a fee of 0."""
    sent: list[pb.ConnectResponse] = []

    async def write(message: Any) -> None:
        sent.append(message)

    miner = _connection_writing_to(write)
    unit = _unit("w-crossed")
    run = asyncio.create_task(miner.run(unit))
    await until(lambda: bool(sent), "the assignment")
    assignment = sent[0].assignment
    done = pb.WorkCompletion(dispatch_token=assignment.dispatch_token)
    done.usage.cpu_time.FromMicroseconds(4_321)
    done.usage.cpu_time_metering = resources_pb2.METERING_METHOD_ISOLATED
    response = pb.WorkResponse(
        dispatch_token=assignment.dispatch_token,
        head=http_pb2.HttpResponseHead(status_code=200),
        body_complete=True,
        completion=done,
    )
    miner.on_message(pb.ConnectRequest(response_nonce=sent[0].nonce, response=response))
    run.cancel()  # in the same instant: the caller went away
    with pytest.raises(asyncio.CancelledError):
        await run
    assert unit.cancelled is not None
    assert unit.cancelled.usage.done()
    assert unit.cancelled.usage.result().cpu_time_us == 4_321


async def test_a_batching_miner_gets_assignments_together_and_its_answer_acknowledges(
    cluster: Cluster,
) -> None:
    """A miner listing the "batch" feature: assignments queued at once reach it in NodeBatch
    messages; its MinerBatch of an answer and WorkSlots, with no Ack, completes each unit
    (the Welcome's "answer_acks") and keeps the miner."""
    miner, _ = await _connect(cluster, "batching")
    assert set(miner.features) == {"batch", "answer_acks"}
    connection = next(iter(cluster.node.broker.miners()))
    assert isinstance(connection, MinerConnection)
    results = await asyncio.gather(
        *(connection.run(_unit(f"w{n}", deadline_s=10)) for n in range(4))
    )
    assert [r.body for r in results] == [miner.miner_id.encode()] * 4
    assert max(miner.batches) > 1  # the four assignments went out in fewer writes
    assert len(miner.assignments) == 4
    assert miner.miner_id in {m.miner_id for m in cluster.node.broker.miners()}


async def test_a_batch_inside_a_miners_batch_drops_the_miner_saying_why() -> None:
    """A MinerBatch holds no batch and no hello: the miner is dropped (ABORTED, with the
    reason), the messages before the bad one were handled, nothing after it."""

    async def write(message: Any) -> None:
        return None

    miner = _connection_writing_to(write)
    slots: list[int] = []
    miner._on_slots = slots.append
    nested = pb.ConnectRequest(batch=pb.MinerBatch())
    first = pb.ConnectRequest(slots=pb.WorkSlots(free=1))
    after = pb.ConnectRequest(slots=pb.WorkSlots(free=0))
    batch = pb.ConnectRequest(batch=pb.MinerBatch(messages=[first, nested, after]))

    await MinerLink._read(_Reads(batch), miner)
    assert miner.closed.is_set()
    assert miner.close_reason == "protocol violation: a batch inside a MinerBatch"
    assert slots == [1]


def _whole_answer_to(assignment: pb.ConnectResponse) -> pb.ConnectRequest:
    """A miner's whole 200 answer (completion included) to ``assignment``, echoing its
    nonce."""
    token = assignment.assignment.dispatch_token
    response = pb.WorkResponse(
        dispatch_token=token,
        head=http_pb2.HttpResponseHead(status_code=200),
        body_complete=True,
        completion=pb.WorkCompletion(dispatch_token=token),
    )
    return pb.ConnectRequest(response_nonce=assignment.nonce, response=response)


async def test_slots_that_come_with_an_answer_never_count_its_slot_twice() -> None:
    """A miner of one slot answers and says it has one free slot, both in the same read (a
    MinerBatch): the node's broker still counts the answered unit until its run ends, and that
    end frees it, so the WorkSlots must count it taken (it once counted it free as well: two
    slots on a one-slot miner, and the next assignment NACKed "no free slot")."""
    sent: list[pb.ConnectResponse] = []

    async def write(message: Any) -> None:
        sent.append(message)

    miner = _connection_writing_to(write)
    told: list[int] = []
    miner._on_slots = told.append
    run = asyncio.create_task(miner.run(_unit("w-slots")))
    await until(lambda: bool(sent), "the assignment")
    answer = _whole_answer_to(sent[0])
    slots = pb.ConnectRequest(response_nonce=sent[0].nonce, slots=pb.WorkSlots(free=1))
    await MinerLink._read(
        _Reads(pb.ConnectRequest(batch=pb.MinerBatch(messages=[answer, slots]))), miner
    )
    assert told == [0]  # taken until the run ends, which frees it: one slot in all
    assert (await run).status == 200
    miner.on_message(slots)
    assert told == [0, 1]  # the run has ended: nothing counted twice any more


async def test_slots_read_while_an_assignment_is_written_count_it_taken() -> None:
    """A one-slot miner's WorkSlots (free=1, sent before it saw any assignment) is read while
    the node is still writing an assignment to it: that unit's slot is taken. The node once
    counted an assignment as sent only once its write had ended, so a WorkSlots read during
    the write (with batching, while a whole batch is written) gave the miner one slot more
    than it had, and the next assignment was NACKed "no free slot" (15 such NACKs in one
    bench/request_path.py run)."""
    writing, written = asyncio.Event(), asyncio.Event()
    sent: list[pb.ConnectResponse] = []

    async def write(message: Any) -> None:
        writing.set()
        await written.wait()
        sent.append(message)

    miner = _connection_writing_to(write)
    told: list[int] = []
    miner._on_slots = told.append
    run = asyncio.create_task(miner.run(_unit("w-writing")))
    await asyncio.wait_for(writing.wait(), 5)
    miner.on_message(pb.ConnectRequest(slots=pb.WorkSlots(free=1)))
    assert told == [0]  # the assignment being written holds the only slot
    written.set()
    await until(lambda: bool(sent), "the assignment")
    miner.on_message(_whole_answer_to(sent[0]))
    assert (await run).status == 200
    miner.on_message(pb.ConnectRequest(response_nonce=sent[0].nonce, slots=pb.WorkSlots(free=1)))
    assert told == [0, 1]  # seen and answered: free again


@pytest.mark.parametrize(
    ("code", "busy"),
    [(grpc.StatusCode.RESOURCE_EXHAUSTED, True), (grpc.StatusCode.UNAVAILABLE, False)],
)
async def test_a_nack_for_want_of_a_slot_is_told_apart(code: grpc.StatusCode, busy: bool) -> None:
    """The broker bars a refusing miner from the unit, unless it refused for want of a free
    slot (RESOURCE_EXHAUSTED), which passes: the link tells the two apart by the NACK's code."""
    sent: list[pb.ConnectResponse] = []

    async def write(message: Any) -> None:
        sent.append(message)

    miner = _connection_writing_to(write)
    run = asyncio.create_task(miner.run(_unit("w-nack")))
    await until(lambda: bool(sent), "the assignment")
    nack = pb.ConnectRequest(response_nonce=sent[0].nonce, ack=pb.Ack())
    nack.error_detail.code = code.value[0]
    nack.error_detail.message = "no free slot" if busy else "draining"
    miner.on_message(nack)
    with pytest.raises(MinerRefusedError) as refused:
        await run
    assert refused.value.busy is busy


class _Reads:
    """A servicer context whose reads return ``messages``, then EOF."""

    def __init__(self, *messages: Any) -> None:
        self.messages = list(messages)

    async def read(self) -> Any:
        return self.messages.pop(0) if self.messages else grpc.aio.EOF
