"""The node trusts only Central, and Central only the node it meant to dial: fakes written
from the protos, real gRPC servers on loopback, mutual TLS from a test CA."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from central.registry import NodeRecord
from central.server import Central
from cgn_common.certs import Role
from cgn_common.errors import CgnError, UnauthenticatedError, UnavailableError
from cgn_common.rpc import open_channel
from cgn_common.status import write_hid_the_status
from cgn_common.tls import ClientAuth, TlsConfig
from cgn_common.types import AccountKind, Tier
from generated.cgn.centrallink.v1 import central_link_service_pb2 as pb
from generated.cgn.centrallink.v1 import central_link_service_pb2_grpc as pb_grpc
from tests.helpers.cluster import central_config, start_cluster, stop_cluster
from tests.helpers.pki import Pki
from tests.helpers.wait import until

ENTERPRISE_KINDS = (AccountKind.ENTERPRISE,)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "ca")


@pytest.fixture
def foreign(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "foreign", "another CA")


async def _fake_central(address: str, tls: TlsConfig, *, hello: bool = True) -> list[Any]:
    """Dials like Central, says hello (unless told not to), asks nothing; returns whatever
    the node sent."""
    received: list[Any] = []
    async with open_channel(address, tls) as channel:
        call: Any = pb_grpc.CentralLinkServiceStub(channel).Connect(timeout=3)
        if hello:
            await call.write(pb.ConnectRequest(hello=pb.CentralHello(replica_id="central-1")))
        while (message := await call.read()) is not grpc.aio.EOF:
            received.append(message)
            # A fake that got this far would answer every question with "verified".
            if message.WhichOneof("kind") == "question":
                answer = pb.Answer(question_id=message.question.question_id)
                answer.account.account_id = "acct_forged"
                answer.account.kind = AccountKind.ENTERPRISE  # type: ignore[assignment]
                await call.write(pb.ConnectRequest(answer=answer))
    return received


async def _attempt(address: str, tls: TlsConfig, *, hello: bool = True) -> tuple[str, list[Any]]:
    try:
        return "linked", await _fake_central(address, tls, hello=hello)
    except grpc.aio.AioRpcError as exc:
        if write_hid_the_status(exc):
            # The node refused the call as the hello was being written, and grpc.aio's client
            # hid the node's status (grpc/grpc#36066): refused all the same.
            return "REFUSED_AS_IT_WROTE", []
        return exc.code().name, []


async def test_fake_central_learns_nothing_and_authenticates_nobody(
    tmp_path: Path, pki: Pki, foreign: Pki
) -> None:
    cluster = await start_cluster(tmp_path, pki)
    try:
        address = cluster.endpoints["central_link"]
        attempts = {
            "no certificate": pki.client_only(),
            "another CA": foreign.issue(Role.CENTRAL, "central-1"),
            "wrong role": pki.issue(Role.GATEWAY, "gw"),
            "plaintext": TlsConfig(insecure_plaintext=True),
        }
        for what, tls in attempts.items():
            outcome, received = await _attempt(address, tls)
            assert outcome in ("UNAVAILABLE", "PERMISSION_DENIED", "REFUSED_AS_IT_WROTE"), what
            assert received == [], what  # not even a NodeHello
        # The node's own status, read with no write to race it.
        wrong_role = await _attempt(address, attempts["wrong role"], hello=False)
        assert wrong_role[0] == "PERMISSION_DENIED"
        await until(lambda: cluster.node.central.connected, "the real Central to link")
        assert cluster.node.central.replicas == ["central-1"]
    finally:
        await stop_cluster(cluster)


async def test_only_the_real_central_answers_while_a_fake_keeps_trying(
    tmp_path: Path, pki: Pki, foreign: Pki
) -> None:
    cluster = await start_cluster(tmp_path, pki)
    enterprise = await cluster.central.accounts.create(AccountKind.ENTERPRISE, "e")
    address = cluster.endpoints["central_link"]
    outcomes: list[str] = []
    stop = asyncio.Event()

    async def fake_keeps_trying() -> None:
        tls_choices = [pki.client_only(), foreign.issue(Role.CENTRAL, "central-1")]
        while not stop.is_set():
            outcome, received = await _attempt(address, tls_choices[len(outcomes) % 2])
            assert received == []
            outcomes.append(outcome)
            await asyncio.sleep(0.02)

    fake = asyncio.create_task(fake_keeps_trying())
    node_central = cluster.node.central
    try:
        await until(lambda: node_central.connected, "the real Central to link")
        info = await node_central.verify_credential(
            enterprise.account.account_id, enterprise.api_key, ENTERPRISE_KINDS
        )
        assert info.account_id == enterprise.account.account_id
        await cluster.central.stop()
        await until(lambda: not node_central.connected, "the link to drop")
        # With Central gone, nobody answers: not the fake.
        with pytest.raises(UnavailableError):
            await node_central.verify_credential("acct_forged", "any", ENTERPRISE_KINDS)
        cluster.central = type(cluster.central)(cluster.central_config)
        await cluster.central.start()
        await until(lambda: node_central.connected, "Central to link again")
        with pytest.raises(UnauthenticatedError):
            await node_central.verify_credential("acct_forged", "any", ENTERPRISE_KINDS)
        with pytest.raises(UnauthenticatedError):
            await node_central.verify_credential(
                enterprise.account.account_id, "wrong key", ENTERPRISE_KINDS
            )
        again = await node_central.verify_credential(
            enterprise.account.account_id, enterprise.api_key, ENTERPRISE_KINDS
        )
        assert again.account_id == enterprise.account.account_id
        await until(lambda: len(outcomes) >= 4, "the fake to have tried several times")
        assert set(outcomes) == {"UNAVAILABLE"}  # every fake attempt failed its handshake
        assert node_central.replicas == ["central-1"]
    finally:
        stop.set()
        await fake
        await stop_cluster(cluster)


async def test_any_linked_replica_answers_and_a_failed_one_is_skipped(
    tmp_path: Path, pki: Pki
) -> None:
    cluster = await start_cluster(tmp_path, pki, central_timeout_s=30)
    second = Central(central_config(pki, tmp_path / "central.db", replica="central-2"))
    await second.start()
    try:
        enterprise = await cluster.central.accounts.create(AccountKind.ENTERPRISE, "e")
        node_central = cluster.node.central
        await until(lambda: len(node_central.replicas) == 2, "both replicas to link")
        assert node_central.replicas == ["central-1", "central-2"]
        await cluster.central.stop()
        started = time.monotonic()
        info = await node_central.verify_credential(
            enterprise.account.account_id, enterprise.api_key, ENTERPRISE_KINDS
        )
        assert info.account_id == enterprise.account.account_id
        assert time.monotonic() - started < 5  # the other replica answered, no timeout
        assert node_central.replicas == ["central-2"]
    finally:
        await second.stop()
        await cluster.node.stop()


class _FakeNode(pb_grpc.CentralLinkServiceServicer):
    """A node impostor: counts streams and questions answered."""

    def __init__(self) -> None:
        self.streams = 0
        self.answers = 0

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]  # noqa: N802
        self.streams += 1
        await context.read()
        await context.write(pb.ConnectResponse(hello=pb.NodeHello(node_id=self.node_id)))
        question = pb.Question(question_id="q1")
        question.verify_credential.account_id = "acct_x"
        question.verify_credential.api_key = "guess"
        await context.write(pb.ConnectResponse(question=question))
        if await context.read() is not grpc.aio.EOF:
            self.answers += 1

    node_id = ""


@pytest.mark.parametrize("disguise", ["plaintext", "another CA", "another node's certificate"])
async def test_a_fake_node_gets_central_to_verify_nothing(
    tmp_path: Path, pki: Pki, foreign: Pki, disguise: str
) -> None:
    cluster = await start_cluster(tmp_path, pki)
    victim = (await cluster.central.accounts.create(AccountKind.NODE, "victim")).account.account_id
    fake = _FakeNode()
    fake.node_id = victim
    if disguise == "plaintext":
        tls = TlsConfig(insecure_plaintext=True)
    elif disguise == "another CA":
        tls = foreign.issue(Role.NODE, victim)
    else:
        tls = pki.issue(Role.NODE, cluster.node_id)  # a real certificate, of another node
    from cgn_common.interceptors import Rule, rules_for
    from cgn_common.rpc import GrpcServer

    server = GrpcServer(
        "fake-node",
        tls,
        ClientAuth.NONE,
        rules_for("cgn.centrallink.v1.CentralLinkService", ["Connect"], Rule.open_to_all()),
    )
    server.add(
        pb_grpc.add_CentralLinkServiceServicer_to_server,
        fake,
        "cgn.centrallink.v1.CentralLinkService",
    )
    address = await server.start("127.0.0.1:0")
    try:
        record = NodeRecord(node_id=victim, central_link_address=address)
        await cluster.central.nodes.upsert(record)
        await cluster.central.linker.ensure(record)
        supervisor = cluster.central.supervisor
        await until(
            lambda: supervisor.restarts.get(f"link-{victim}", 0) >= 2,
            "Central to have tried the fake twice",
        )
        assert not cluster.central.linker.is_linked(victim)
        assert fake.answers == 0
        assert fake.streams == 0  # the handshake failed before any stream opened
    finally:
        await server.stop(0)
        await stop_cluster(cluster)


async def test_an_exception_in_centrals_answer_path_is_an_error_at_once(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = await start_cluster(tmp_path, pki, central_timeout_s=30)
    try:
        await until(lambda: cluster.node.central.connected, "the link")

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("injected fault in the account store")

        monkeypatch.setattr(cluster.central.accounts, "verify_key", broken)
        started = time.monotonic()
        with pytest.raises(CgnError) as raised, caplog.at_level(logging.ERROR):
            await cluster.node.central.verify_credential("acct_x", "k", ENTERPRISE_KINDS)
        assert time.monotonic() - started < 5  # an answer, not the 30 s timeout
        assert raised.value.code is grpc.StatusCode.INTERNAL
        assert "injected" not in raised.value.message  # no internals leak to the node
        failed = [r for r in caplog.records if r.getMessage() == "answer_failed"]
        assert failed
        assert failed[0].exc_info is not None
        assert "injected fault" in str(failed[0].exc_info[1])
    finally:
        await stop_cluster(cluster)


async def test_an_exception_in_a_link_loop_is_logged_and_the_link_comes_back(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = await start_cluster(tmp_path, pki)
    try:
        await until(lambda: cluster.node.central.connected, "the link")
        link = cluster.central.linker.link(cluster.node_id)
        assert link is not None
        original = link._handle
        faults: list[int] = []

        def handle_once_broken(*args: Any) -> None:
            if not faults:
                faults.append(1)
                raise RuntimeError("injected fault in the link loop")
            original(*args)

        monkeypatch.setattr(link, "_handle", handle_once_broken)
        with caplog.at_level(logging.ERROR):
            with contextlib.suppress(CgnError):
                await cluster.node.central.verify_credential("acct_x", "k", ENTERPRISE_KINDS)
            await until(lambda: link.sessions >= 2, "the link to come back")
        failed = [r for r in caplog.records if r.getMessage() == "loop_failed"]
        assert failed
        assert failed[0].exc_info is not None
        assert "injected fault in the link loop" in str(failed[0].exc_info[1])
        await until(lambda: cluster.node.central.connected, "the node to see the link")
        with pytest.raises(UnauthenticatedError):
            await cluster.node.central.verify_credential("acct_x", "k", ENTERPRISE_KINDS)
    finally:
        await stop_cluster(cluster)


class _PooledMiner:
    """A MinerHandle in the broker's pool that records being closed."""

    def __init__(self, miner_id: str) -> None:
        self.miner_id = miner_id
        self.tier = Tier.TIER_2_DATACENTER
        self.owner_account_id = ""
        self.dservices = frozenset({"echo"})
        self.capacity = 1
        self.closed = ""

    async def run(self, unit: Any) -> Any:
        raise AssertionError("no work in this test")

    def close(self, reason: str) -> None:
        self.closed = reason


async def test_a_new_link_catches_up_on_revocations_and_bans_it_missed(
    tmp_path: Path, pki: Pki
) -> None:
    """Revocations and bans recorded at Central without reaching the node (no directive) are
    learned on the next link: the revoked token is refused, the banned miner dropped."""
    cluster = await start_cluster(tmp_path, pki)
    try:
        accounts = cluster.central.accounts
        kept = await accounts.create(AccountKind.ENTERPRISE, "kept")
        banned = await accounts.create(AccountKind.ENTERPRISE, "banned")
        issuer = cluster.node.issuer
        kept_token, _ = issuer.issue(kept.account.account_id, ())
        banned_token, _ = issuer.issue(banned.account.account_id, ())
        miners = {}
        for name in ("good miner", "banned miner"):
            created = await accounts.create(AccountKind.MINER, name, tier=Tier.TIER_2_DATACENTER)
            miners[name] = _PooledMiner(created.account.account_id)
            cluster.node.broker.add_miner(miners[name])
        await accounts.set_banned(miners["banned miner"].miner_id, True)
        await until(lambda: cluster.node.central.connected, "the link")
        await accounts.set_banned(banned.account.account_id, True)
        await cluster.central.revocations.revoke_account(banned.account.account_id)
        syncs = cluster.node.standing.syncs
        await cluster.restart_central()
        await until(lambda: cluster.node.standing.syncs > syncs, "the catch-up")
        await until(lambda: not cluster.node.standing._running, "the re-check to finish")
        assert issuer.verify(kept_token).account_id == kept.account.account_id
        with pytest.raises(UnauthenticatedError):
            issuer.verify(banned_token)
        assert miners["banned miner"].closed
        assert not miners["good miner"].closed
    finally:
        await stop_cluster(cluster)


async def test_a_question_the_node_abandons_is_withdrawn_at_central(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = await start_cluster(tmp_path, pki, central_timeout_s=1)
    withdrawn = asyncio.Event()
    try:
        await until(lambda: cluster.node.central.connected, "the link")

        async def slow(*args: Any, **kwargs: Any) -> Any:
            try:
                await asyncio.Event().wait()  # an Argon2 check stuck in the queue
            except asyncio.CancelledError:
                withdrawn.set()
                raise

        monkeypatch.setattr(cluster.central.accounts, "verify_key", slow)
        with pytest.raises(UnavailableError):
            await cluster.node.central.verify_credential("acct_x", "k", ENTERPRISE_KINDS)
        await asyncio.wait_for(withdrawn.wait(), 5)
    finally:
        await stop_cluster(cluster)
