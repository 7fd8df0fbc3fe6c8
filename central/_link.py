"""Central's outbound links: one task per registered node dials its central link, sends
CentralHello, checks the node's credentials and answers the node's questions.
Central never accepts inbound authentication traffic (SPEC section 3)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc

from central.accounts import Account, AccountStore
from central.registry import NodeRecord
from cgn_common.errors import CgnError, UnauthenticatedError
from cgn_common.logs import log_event
from cgn_common.rpc import TlsConfig, open_channel, status_proto
from cgn_common.types import AccountKind, Tier, WorkGrade
from generated.cgn.centrallink.v1 import central_link_service_pb2 as pb
from generated.cgn.centrallink.v1 import central_link_service_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)

_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0


def account_info(account: Account) -> pb.AccountInfo:
    """The AccountInfo message for ``account``."""
    return pb.AccountInfo(
        account_id=account.account_id,
        kind=int(account.kind),  # type: ignore[arg-type]
        allowed_tiers=[int(t) for t in account.allowed_tiers],  # type: ignore[misc]
        pseudonym=account.pseudonym,
        tier=int(account.tier or 0),  # type: ignore[arg-type]
        banned=account.banned,
    )


class NodeLink:
    """Central's link to one node, redialled with backoff until stopped."""

    def __init__(
        self, node: NodeRecord, accounts: AccountStore, replica_id: str, tls: TlsConfig
    ) -> None:
        self.node = node
        self.linked = asyncio.Event()
        self._accounts = accounts
        self._replica_id = replica_id
        self._tls = tls
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts dialing."""
        self._task = asyncio.create_task(self._run(), name=f"link-{self.node.node_id}")

    async def stop(self) -> None:
        """Closes the link."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = _BACKOFF_START_S
        while True:
            try:
                await self._session()
                delay = _BACKOFF_START_S
            except (grpc.aio.AioRpcError, CgnError, OSError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log_event(
                    _log,
                    "node_link_down",
                    logging.WARNING,
                    node_id=self.node.node_id,
                    address=self.node.central_link_address,
                    error=detail,
                    retry_in_s=delay,
                )
            finally:
                self.linked.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _session(self) -> None:
        async with open_channel(self.node.central_link_address, self._tls) as channel:
            stub = pb_grpc.CentralLinkServiceStub(channel)
            call: Any = stub.Connect()
            await call.write(pb.ConnectRequest(hello=pb.CentralHello(replica_id=self._replica_id)))
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello":
                raise UnauthenticatedError("node did not answer with NodeHello")
            node = await self._accounts.verify_key(
                first.hello.node_id, first.hello.api_key, [AccountKind.NODE]
            )
            if node.account_id != self.node.node_id:
                raise UnauthenticatedError("node id does not match the registry")
            self.linked.set()
            log_event(_log, "node_linked", node_id=self.node.node_id)
            lock = asyncio.Lock()
            tasks: set[asyncio.Task[None]] = set()
            while (message := await call.read()) is not grpc.aio.EOF:
                if message.WhichOneof("kind") == "question":
                    task = asyncio.create_task(self._answer(call, lock, message.question))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

    async def _answer(self, call: Any, lock: asyncio.Lock, question: pb.Question) -> None:
        answer = pb.Answer(question_id=question.question_id)
        try:
            kind = question.WhichOneof("kind")
            if kind == "verify_credential":
                q = question.verify_credential
                kinds = [AccountKind(k) for k in q.allowed_kinds]
                account = await self._accounts.verify_key(q.account_id, q.api_key, kinds)
                answer.account.CopyFrom(account_info(account))
            elif kind == "verify_miner":
                m = question.verify_miner
                account = await self._accounts.verify_key(
                    m.miner_id, m.api_key, [AccountKind.MINER]
                )
                grade = (
                    WorkGrade.STANDARD if account.tier and account.tier.trusted else WorkGrade.LOW
                )
                answer.miner.CopyFrom(
                    pb.MinerInfo(
                        account=account_info(account),
                        max_grade=int(grade),  # type: ignore[arg-type]
                        owner_account_id=(
                            account.parent_account_id if account.tier is Tier.TIER_1_PRIVATE else ""
                        ),
                    )
                )
            else:
                raise CgnError(f"question {kind!r} is not answered by this Central version")
        except CgnError as exc:
            answer.error.CopyFrom(status_proto(exc))
        async with lock:
            await call.write(pb.ConnectRequest(answer=answer))


class Linker:
    """Keeps one NodeLink per registered node."""

    def __init__(self, accounts: AccountStore, replica_id: str, tls: TlsConfig) -> None:
        self._accounts = accounts
        self._replica_id = replica_id
        self._tls = tls
        self._links: dict[str, NodeLink] = {}

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
        link = NodeLink(node, self._accounts, self._replica_id, self._tls)
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
