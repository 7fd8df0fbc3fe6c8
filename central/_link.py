"""Central's outbound links: one supervised loop per registered node dials its central link
over mutual TLS, checks the node's identity and answers the node's questions.
Central never accepts inbound authentication traffic (SPEC section 3)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC
from typing import Any

import grpc

from central.accounts import Account, AccountStore
from central.registry import NodeRecord
from central.revocations import AccountRevocation, RevocationStore, SessionRevocation
from cgn_common.certs import node_dns_name
from cgn_common.errors import (
    CgnError,
    InvalidArgumentError,
    UnauthenticatedError,
    UnimplementedError,
)
from cgn_common.ids import new_id
from cgn_common.logs import log_event
from cgn_common.rpc import open_channel, status_proto
from cgn_common.streams import StreamWriter
from cgn_common.tasks import Supervisor
from cgn_common.tls import TlsConfig
from cgn_common.types import AccountKind, Tier, WorkGrade
from generated.cgn.centrallink.v1 import central_link_service_pb2 as pb
from generated.cgn.centrallink.v1 import central_link_service_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)


def account_info(account: Account, session_epoch: int = 0) -> pb.AccountInfo:
    """The AccountInfo message for ``account``."""
    return pb.AccountInfo(
        account_id=account.account_id,
        kind=int(account.kind),  # type: ignore[arg-type]
        allowed_tiers=[int(t) for t in account.allowed_tiers],  # type: ignore[misc]
        pseudonym=account.pseudonym,
        tier=int(account.tier) if account.tier else None,  # type: ignore[arg-type]
        banned=account.banned,
        session_epoch=session_epoch,
    )


def revocation_directive(revocation: AccountRevocation | SessionRevocation) -> pb.Directive:
    """The directive announcing ``revocation`` to the nodes."""
    directive = pb.Directive(directive_id=new_id("dir"))
    if isinstance(revocation, AccountRevocation):
        directive.revoke_account_sessions.CopyFrom(_account_revocation(revocation))
    else:
        directive.revoke_session.CopyFrom(_session_revocation(revocation))
    return directive


def _account_revocation(revocation: AccountRevocation) -> pb.RevokeAccountSessions:
    return pb.RevokeAccountSessions(
        account_id=revocation.account_id, session_epoch=revocation.epoch
    )


def _session_revocation(revocation: SessionRevocation) -> pb.RevokeSession:
    message = pb.RevokeSession(account_id=revocation.account_id, session_id=revocation.session_id)
    message.expires_at.FromDatetime(revocation.expires_at)
    return message


class NodeLink:
    """Central's link to one node, redialled with backoff (under the supervisor) until stopped.

    Central dials the node's registered address expecting a certificate that names
    ``<node_id>.node.cgn`` from the operator CA: the handshake proves it reached that node, so
    no credential of the node travels on the stream. Only then are questions answered.
    """

    def __init__(self, node: NodeRecord, linker: Linker) -> None:
        self.node = node
        self.linked = asyncio.Event()
        self.sessions = 0
        self._linker = linker
        self._accounts = linker.accounts
        self._supervisor = linker.supervisor
        self._task: asyncio.Task[None] | None = None
        self._writer: StreamWriter | None = None
        #: directive id -> when it was sent; removed when the node acknowledges it.
        self.unacknowledged: dict[str, float] = {}

    async def direct(self, directive: pb.Directive) -> bool:
        """Sends ``directive`` on the live link; False when the node is not linked."""
        writer = self._writer
        if writer is None or not self.linked.is_set():
            return False
        self.unacknowledged[directive.directive_id] = time.monotonic()
        if (exc := await writer.send_quietly(pb.ConnectRequest(directive=directive))) is not None:
            log_event(_log, "directive_undelivered", node_id=self.node.node_id, error=repr(exc))
            return False
        return True

    def start(self) -> None:
        """Starts dialing."""
        self._task = self._supervisor.loop(f"link-{self.node.node_id}", self._run_once)

    async def stop(self) -> None:
        """Closes the link."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_once(self) -> None:
        """One connection; expected failures are logged here, anything else propagates to
        the supervisor (logged with its traceback, then redialled)."""
        try:
            await self._session()
        except (grpc.aio.AioRpcError, CgnError, OSError) as exc:
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            log_event(
                _log,
                "node_link_down",
                logging.WARNING,
                node_id=self.node.node_id,
                address=self.node.central_link_address,
                error=detail,
            )
        finally:
            self.linked.clear()

    async def _session(self) -> None:
        tls = self._linker.tls
        server_name = "" if tls.insecure_plaintext else node_dns_name(self.node.node_id)
        channel = open_channel(self.node.central_link_address, tls, server_name=server_name)
        async with channel:
            stub = pb_grpc.CentralLinkServiceStub(channel)
            call: Any = stub.Connect()
            await call.write(
                pb.ConnectRequest(hello=pb.CentralHello(replica_id=self._linker.replica_id))
            )
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello":
                raise UnauthenticatedError("node did not answer with NodeHello")
            if first.hello.node_id != self.node.node_id:
                raise UnauthenticatedError("node id does not match the registry")
            node = await self._accounts.get(self.node.node_id)
            if node.kind is not AccountKind.NODE or node.banned:
                raise UnauthenticatedError("node account is banned or not a node")
            self.sessions += 1
            self.linked.set()
            log_event(_log, "node_linked", node_id=self.node.node_id)
            writer = self._writer = StreamWriter(call.write)
            answering: dict[str, asyncio.Task[Any]] = {}
            try:
                while (message := await call.read()) is not grpc.aio.EOF:
                    self._handle(writer, message, answering)
            finally:
                self._writer = None
                for task in answering.values():
                    task.cancel()

    def _handle(
        self,
        writer: StreamWriter,
        message: pb.ConnectResponse,
        answering: dict[str, asyncio.Task[Any]],
    ) -> None:
        kind = message.WhichOneof("kind")
        if kind == "question":
            question_id = message.question.question_id
            task = self._supervisor.spawn(
                f"answer-{self.node.node_id}", self._answer(writer, message.question)
            )
            answering[question_id] = task
            task.add_done_callback(lambda _: answering.pop(question_id, None))
        elif kind == "directive_ack":
            sent = self.unacknowledged.pop(message.directive_ack.directive_id, None)
            if sent is not None:
                log_event(
                    _log,
                    "directive_acknowledged",
                    node_id=self.node.node_id,
                    directive_id=message.directive_ack.directive_id,
                    after_ms=int((time.monotonic() - sent) * 1000),
                )
        elif kind == "cancel_question":
            # The node stopped waiting: drop the work (a queued Argon2 check never runs).
            withdrawn = answering.pop(message.cancel_question.question_id, None)
            if withdrawn is not None:
                withdrawn.cancel()

    async def _answer(self, writer: StreamWriter, question: pb.Question) -> None:
        """Always answers, with the result or an error status, unless the node withdrew the
        question (the task is then cancelled and nobody waits for an answer)."""
        answer = pb.Answer(question_id=question.question_id)
        try:
            await self._fill(question, answer)
        except CgnError as exc:
            answer.ClearField("kind")
            answer.error.CopyFrom(status_proto(exc))
        except Exception as exc:
            log_event(
                _log,
                "answer_failed",
                logging.ERROR,
                exc=exc,
                node_id=self.node.node_id,
                question=question.WhichOneof("kind"),
            )
            answer.ClearField("kind")
            answer.error.CopyFrom(status_proto(CgnError("Central failed to answer")))
        gone = await writer.send_quietly(pb.ConnectRequest(answer=answer))
        if gone is not None:
            log_event(
                _log,
                "answer_undelivered",
                logging.WARNING,
                node_id=self.node.node_id,
                error=str(gone),
            )

    async def _info(self, account: Account) -> pb.AccountInfo:
        """What a node needs of an account: standing, session epoch, its body limit, where
        payouts go."""
        info = account_info(account, await self._linker.revocations.epoch(account.account_id))
        info.ethereum_address = account.ethereum_address
        info.max_body_bytes = await self._accounts.effective_max_body_bytes(account.account_id)
        choice = await self._accounts.payout_choice(account.account_id)
        if choice.charity_account_id and choice.charity_share_ppm:
            charity = await self._accounts.get(choice.charity_account_id)
            info.charity_pseudonym = charity.pseudonym
            info.charity_share_ppm = choice.charity_share_ppm
            info.charity_ethereum_address = charity.ethereum_address
        return info

    async def _fill(self, question: pb.Question, answer: pb.Answer) -> None:
        kind = question.WhichOneof("kind")
        if kind == "verify_credential":
            q = question.verify_credential
            kinds = [AccountKind(k) for k in q.allowed_kinds]
            account = await self._accounts.verify_key(q.account_id, q.api_key, kinds)
            answer.account.CopyFrom(await self._info(account))
        elif kind == "verify_miner":
            m = question.verify_miner
            account = await self._accounts.verify_key(m.miner_id, m.api_key, [AccountKind.MINER])
            grade = WorkGrade.STANDARD if account.tier and account.tier.trusted else WorkGrade.LOW
            answer.miner.CopyFrom(
                pb.MinerInfo(
                    account=await self._info(account),
                    max_grade=int(grade),  # type: ignore[arg-type]
                    owner_account_id=(
                        account.parent_account_id if account.tier is Tier.TIER_1_PRIVATE else ""
                    ),
                )
            )
        elif kind == "get_account_standing":
            account = await self._accounts.get(question.get_account_standing.account_id)
            answer.standing.CopyFrom(await self._info(account))
        elif kind == "revoke_session":
            message = question.revoke_session
            if not message.session_id or not message.account_id:
                raise InvalidArgumentError("account_id and session_id are required")
            revocation = SessionRevocation(
                message.account_id,
                message.session_id,
                message.expires_at.ToDatetime(tzinfo=UTC),
            )
            await self._linker.revocations.revoke_session(revocation)
            told = await self._linker.broadcast(revocation_directive(revocation))
            log_event(_log, "session_revoked", node_id=self.node.node_id, nodes_told=told)
            answer.session_revoked.CopyFrom(message)
        elif kind == "list_session_revocations":
            ask = question.list_session_revocations
            page = await self._linker.revocations.recent(
                ask.lookback.ToTimedelta(), ask.page_size, ask.page_token
            )
            answer.session_revocations.CopyFrom(
                pb.SessionRevocations(
                    accounts=[_account_revocation(r) for r in page.accounts],
                    sessions=[_session_revocation(r) for r in page.sessions],
                    next_page_token=page.next_page_token,
                )
            )
        else:
            raise UnimplementedError(f"question {kind!r} is not answered by this Central version")


class Linker:
    """Keeps one NodeLink per registered node."""

    def __init__(
        self,
        accounts: AccountStore,
        revocations: RevocationStore,
        replica_id: str,
        tls: TlsConfig,
        supervisor: Supervisor,
    ) -> None:
        self.accounts = accounts
        self.revocations = revocations
        self.replica_id = replica_id
        self.tls = tls
        self.supervisor = supervisor
        self._links: dict[str, NodeLink] = {}

    async def broadcast(self, directive: pb.Directive) -> int:
        """Sends ``directive`` to every linked node; returns how many it reached."""
        results = await asyncio.gather(*(link.direct(directive) for link in self._links.values()))
        return sum(results)

    def link(self, node_id: str) -> NodeLink | None:
        """The link to ``node_id``, if it is registered."""
        return self._links.get(node_id)

    def is_linked(self, node_id: str) -> bool:
        """True while an authenticated link to ``node_id`` is up."""
        link = self._links.get(node_id)
        return link is not None and link.linked.is_set()

    async def ensure(self, node: NodeRecord) -> None:
        """Dials ``node`` (again, when its address changed)."""
        current = self._links.get(node.node_id)
        if current is not None and current.node == node:
            return
        await self.drop(node.node_id)
        link = NodeLink(node, self)
        self._links[node.node_id] = link
        link.start()

    async def drop(self, node_id: str) -> None:
        """Closes the link to ``node_id``."""
        link = self._links.pop(node_id, None)
        if link is not None:
            await link.stop()

    async def close(self) -> None:
        """Closes every link."""
        for node_id in list(self._links):
            await self.drop(node_id)
