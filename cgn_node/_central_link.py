"""The node's CentralLinkService: Central dials in, the node sends NodeHello, and then
the node's questions travel on that stream (SPEC sections 3 and 6)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, TypeAlias

import grpc

from cgn_common.config import Secret
from cgn_common.errors import UnavailableError
from cgn_common.ids import new_id
from cgn_common.logs import log_event
from cgn_common.rpc import error_from_status
from cgn_common.types import AccountKind, Tier, WorkGrade
from cgn_node.central_client import AccountInfo, MinerInfo
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
        tier=Tier(info.tier) if info.tier else None,
    )


class _Link:
    def __init__(self, context: Context, replica_id: str) -> None:
        self.context = context
        self.replica_id = replica_id
        self.lock = asyncio.Lock()
        self.pending: dict[str, asyncio.Future[pb.Answer]] = {}

    async def send(self, message: pb.ConnectResponse) -> None:
        async with self.lock:
            await self.context.write(message)


class CentralLink(pb_grpc.CentralLinkServiceServicer):
    """Serves Central's inbound streams and asks questions over them."""

    def __init__(self, node_id: str, node_key: Secret, timeout_s: float) -> None:
        self._node_id = node_id
        self._node_key = node_key
        self._timeout_s = timeout_s
        self._links: list[_Link] = []
        self._changed = asyncio.Condition()

    @property
    def connected(self) -> bool:
        """True while at least one Central replica holds a link."""
        return bool(self._links)

    # A read/write-style bidi handler (context.read/write), which grpc.aio allows in place of
    # the async generator the stub's signature names.
    async def Connect(  # type: ignore[override]  # noqa: N802
        self, request_iterator: Any, context: Context
    ) -> None:
        """Handles one Central replica's stream for as long as it lasts."""
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected CentralHello first")
        link = _Link(context, first.hello.replica_id)
        await link.send(
            pb.ConnectResponse(
                hello=pb.NodeHello(node_id=self._node_id, api_key=self._node_key.reveal())
            )
        )
        async with self._changed:
            self._links.append(link)
            self._changed.notify_all()
        log_event(_log, "central_linked", replica_id=link.replica_id)
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                if message.WhichOneof("kind") == "answer":
                    future = link.pending.pop(message.answer.question_id, None)
                    if future is not None and not future.done():
                        future.set_result(message.answer)
        finally:
            self._links.remove(link)
            for future in link.pending.values():
                if not future.done():
                    future.set_exception(UnavailableError("central link lost"))
            log_event(_log, "central_unlinked", logging.WARNING, replica_id=link.replica_id)

    async def _link(self) -> _Link:
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: bool(self._links)), self._timeout_s
                )
            except TimeoutError:
                raise UnavailableError("central service unreachable") from None
            return self._links[0]

    async def _ask(self, question: pb.Question) -> pb.Answer:
        link = await self._link()
        question.question_id = new_id("q")
        future: asyncio.Future[pb.Answer] = asyncio.get_running_loop().create_future()
        link.pending[question.question_id] = future
        try:
            await link.send(pb.ConnectResponse(question=question))
            answer = await asyncio.wait_for(future, self._timeout_s)
        except TimeoutError:
            raise UnavailableError("central service did not answer in time") from None
        finally:
            link.pending.pop(question.question_id, None)
        if answer.HasField("error"):
            raise error_from_status(answer.error)
        return answer

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
