"""The node's CentralLinkService: Central dials in, the node answers with NodeHello, and then
the node's questions travel on that stream (SPEC sections 3, 6 and 15).

Who may open this stream is decided before a byte of it is read: the server demands a client
certificate of the operator CA and the authorization table admits only the Central role
(``cgn_node/server.py``). So every link here is an authenticated Central replica; the node
never sends a secret on it. Several replicas may be linked at once: a question goes to the
least busy one and moves to another if its link drops, so link order never decides trust.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import grpc

from cgn_common.errors import PermissionDeniedError, UnavailableError
from cgn_common.ids import new_id
from cgn_common.interceptors import current_caller
from cgn_common.logs import log_event
from cgn_common.rpc import error_from_status
from cgn_common.streams import StreamWriter, read_hello
from cgn_common.tasks import Supervisor
from cgn_common.types import AccountKind, Tier, WorkGrade
from cgn_node.central_client import AccountInfo, MinerInfo, SessionRevocations
from generated.cgn.centrallink.v1 import central_link_service_pb2 as pb
from generated.cgn.centrallink.v1 import central_link_service_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)

#: grpc ships no type stubs, so the servicer context is untyped.
Context: TypeAlias = Any


def _account(info: pb.AccountInfo) -> AccountInfo:
    return AccountInfo(
        account_id=info.account_id,
        kind=AccountKind(info.kind),
        allowed_tiers=tuple(Tier(t) for t in info.allowed_tiers),
        pseudonym=info.pseudonym,
        tier=Tier(info.tier) if info.HasField("tier") else None,
        banned=info.banned,
        session_epoch=info.session_epoch,
        ethereum_address=info.ethereum_address,
        charity_pseudonym=info.charity_pseudonym,
        charity_share_ppm=info.charity_share_ppm,
        charity_ethereum_address=info.charity_ethereum_address,
        max_body_bytes=info.max_body_bytes,
    )


class _LinkLostError(Exception):
    """The link a question went out on dropped before the answer came."""


class _Link:
    def __init__(self, context: Context, replica: str) -> None:
        self.context = context
        self.replica = replica
        self.link_id = new_id("clink")
        self.writer = StreamWriter(context.write)
        self.pending: dict[str, asyncio.Future[pb.Answer]] = {}

    async def send(self, message: pb.ConnectResponse) -> None:
        await self.writer.send(message)


class CentralLink(pb_grpc.CentralLinkServiceServicer):
    """Serves Central's inbound streams and asks questions over them.

    ``on_links_changed`` runs (synchronously, it should only schedule work) whenever a link
    is added or lost, so the node can re-check what earlier answers admitted.
    """

    def __init__(
        self, node_id: str, timeout_s: float, supervisor: Supervisor | None = None
    ) -> None:
        self._node_id = node_id
        self._timeout_s = timeout_s
        self._supervisor = supervisor or Supervisor("central-link")
        self._links: dict[str, _Link] = {}
        #: The running Connect handlers, ended by close() before the server stops.
        self._handlers: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Condition()
        self.on_links_changed: Callable[[], None] = lambda: None
        #: Called for a BanMiner directive with (miner id, reason).
        self.on_ban_miner: Callable[[str, str], object] = lambda miner_id, reason: None
        #: Called for a RevokeAccountSessions directive with (account id, new epoch).
        self.on_revoke_sessions: Callable[[str, int], None] = lambda account_id, epoch: None
        #: Called for a RevokeSession directive with (session id, expiry as a Unix time).
        self.on_revoke_session: Callable[[str, float], None] = lambda session_id, expiry: None

    async def close(self, timeout_s: float = 5.0) -> None:
        """Ends every link's handler. Call before the server stops: grpc.aio's stop does not
        wait for a bidirectional handler, and one still running when the server is gone can
        hang the event loop's shutdown (grpc/grpc#37239)."""
        handlers = set(self._handlers)
        for handler in handlers:
            handler.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=timeout_s)

    @property
    def connected(self) -> bool:
        """True while at least one Central replica holds a link."""
        return bool(self._links)

    @property
    def replicas(self) -> list[str]:
        """The certificate names of the linked Central replicas."""
        return sorted({link.replica for link in self._links.values()})

    # A read/write-style bidi handler (context.read/write), which grpc.aio allows in place of
    # the async generator the stub's signature names.
    async def Connect(  # type: ignore[override]  # noqa: N802
        self, request_iterator: Any, context: Context
    ) -> None:
        """Handles one Central replica's stream for as long as it lasts."""
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        identity = current_caller().identity
        # The interceptor admitted only a Central certificate; in the development plaintext
        # mode there is none and the replica is known by what it says.
        hello = await read_hello(context, "hello", "CentralHello")
        replica = identity.name if identity is not None else hello.replica_id
        if identity is not None and hello.replica_id not in ("", identity.name):
            raise PermissionDeniedError(
                "replica_id does not match the certificate", reason="IDENTITY_MISMATCH"
            )
        link = _Link(context, replica)
        await link.send(pb.ConnectResponse(hello=pb.NodeHello(node_id=self._node_id)))
        async with self._changed:
            self._links[link.link_id] = link
            self._changed.notify_all()
        log_event(_log, "central_linked", replica=replica, links=len(self._links))
        self.on_links_changed()
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                kind = message.WhichOneof("kind")
                if kind == "answer":
                    future = link.pending.pop(message.answer.question_id, None)
                    if future is not None and not future.done():
                        future.set_result(message.answer)
                elif kind == "directive":
                    self._obey(link, message.directive)
        finally:
            del self._links[link.link_id]
            for future in link.pending.values():
                if not future.done():
                    future.set_exception(_LinkLostError())
            log_event(
                _log, "central_unlinked", logging.WARNING, replica=replica, links=len(self._links)
            )
            self.on_links_changed()

    def _obey(self, link: _Link, directive: pb.Directive) -> None:
        """Carries out a directive at once, then acknowledges it."""
        kind = directive.WhichOneof("kind")
        if kind == "ban_miner":
            self.on_ban_miner(directive.ban_miner.miner_id, directive.ban_miner.reason)
        elif kind == "revoke_account_sessions":
            revoked = directive.revoke_account_sessions
            self.on_revoke_sessions(revoked.account_id, revoked.session_epoch)
        elif kind == "revoke_session":
            session = directive.revoke_session
            self.on_revoke_session(session.session_id, session.expires_at.ToSeconds())
        log_event(_log, "central_directive_obeyed", kind=kind, directive_id=directive.directive_id)
        ack = pb.ConnectResponse(directive_ack=pb.DirectiveAck(directive_id=directive.directive_id))
        self._supervisor.spawn(
            f"directive-ack-{directive.directive_id}", link.writer.send_quietly(ack)
        )

    async def _pick(self, deadline: float, avoid: set[str]) -> _Link:
        """The least busy live link not in ``avoid``, waiting for one until ``deadline``."""

        def usable() -> list[_Link]:
            return [link for lid, link in self._links.items() if lid not in avoid]

        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: bool(usable())),
                    max(0.0, deadline - time.monotonic()),
                )
            except TimeoutError:
                raise UnavailableError(
                    "central service unreachable", reason="CENTRAL_UNAVAILABLE"
                ) from None
            return min(usable(), key=lambda link: len(link.pending))

    async def _ask(self, question: pb.Question) -> pb.Answer:
        deadline = time.monotonic() + self._timeout_s
        tried: set[str] = set()
        loop = asyncio.get_running_loop()
        while True:
            link = await self._pick(deadline, tried)
            tried.add(link.link_id)
            question.question_id = new_id("q")
            future: asyncio.Future[pb.Answer] = loop.create_future()
            link.pending[question.question_id] = future
            try:
                await link.send(pb.ConnectResponse(question=question))
                answer = await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
            except (TimeoutError, asyncio.CancelledError):
                self._withdraw(link, question.question_id)
                if not isinstance(sys.exc_info()[1], TimeoutError):
                    raise
                raise UnavailableError(
                    "central service did not answer in time", reason="CENTRAL_UNAVAILABLE"
                ) from None
            except (_LinkLostError, grpc.aio.AioRpcError, RuntimeError):
                log_event(_log, "central_question_moved", logging.WARNING, replica=link.replica)
                continue  # ask another replica
            finally:
                link.pending.pop(question.question_id, None)
            if answer.HasField("error"):
                raise error_from_status(answer.error)
            return answer

    def _withdraw(self, link: _Link, question_id: str) -> None:
        """Tells Central the answer is no longer awaited, so it stops working on it."""
        withdraw = pb.ConnectResponse(cancel_question=pb.CancelQuestion(question_id=question_id))
        self._supervisor.spawn(f"withdraw-{question_id}", link.writer.send_quietly(withdraw))

    async def verify_credential(
        self, account_id: str, api_key: str, kinds: Sequence[AccountKind]
    ) -> AccountInfo:
        """Asks Central to check an API key."""
        question = pb.Question(
            verify_credential=pb.VerifyCredential(
                account_id=account_id,
                api_key=api_key,
                allowed_kinds=[int(k) for k in kinds],  # type: ignore[misc]
            )
        )
        return _account((await self._ask(question)).account)

    async def verify_miner(self, miner_id: str, api_key: str) -> MinerInfo:
        """Asks Central to check a miner's credentials."""
        question = pb.Question(verify_miner=pb.VerifyMiner(miner_id=miner_id, api_key=api_key))
        miner = (await self._ask(question)).miner
        return MinerInfo(
            account=_account(miner.account),
            max_grade=WorkGrade(miner.max_grade or WorkGrade.LOW),
            owner_account_id=miner.owner_account_id,
        )

    async def account_standing(self, account_id: str) -> AccountInfo:
        """Asks Central for an account's current standing (no secret involved)."""
        question = pb.Question(get_account_standing=pb.GetAccountStanding(account_id=account_id))
        return _account((await self._ask(question)).standing)

    async def revoke_session(self, account_id: str, session_id: str, expires_at: float) -> None:
        """Asks Central to record a revoked session and announce it to every node."""
        revoke = pb.RevokeSession(account_id=account_id, session_id=session_id)
        revoke.expires_at.FromSeconds(int(expires_at))
        await self._ask(pb.Question(revoke_session=revoke))

    async def session_revocations(self, lookback_s: float) -> SessionRevocations:
        """Every revocation Central recorded within ``lookback_s`` (all pages)."""
        result = SessionRevocations()
        page_token = ""
        while True:
            ask = pb.ListSessionRevocations(page_token=page_token)
            ask.lookback.FromMilliseconds(int(lookback_s * 1000))
            page = (await self._ask(pb.Question(list_session_revocations=ask))).session_revocations
            result.accounts.extend((a.account_id, a.session_epoch) for a in page.accounts)
            result.sessions.extend(
                (s.session_id, float(s.expires_at.ToSeconds())) for s in page.sessions
            )
            if not page.next_page_token:
                return result
            page_token = page.next_page_token
