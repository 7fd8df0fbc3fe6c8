"""Central's admin servicers (AccountAdminService, RegistryService): proto <-> domain."""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

from central._link import Linker, revocation_directive
from central.accounts import Account, AccountStore
from central.registry import NodeRecord, NodeRegistry
from central.revocations import AccountRevocation
from cgn_common.certs import Role
from cgn_common.errors import InvalidArgumentError, UnimplementedError
from cgn_common.ids import new_id
from cgn_common.interceptors import Rule, Rules, rules_for
from cgn_common.logs import log_event
from cgn_common.rpc import GrpcServer
from cgn_common.types import AccountKind, Tier
from generated.cgn.admin.v1 import account_admin_service_pb2 as acct_pb
from generated.cgn.admin.v1 import account_admin_service_pb2_grpc as acct_grpc
from generated.cgn.admin.v1 import registry_service_pb2 as reg_pb
from generated.cgn.admin.v1 import registry_service_pb2_grpc as reg_grpc
from generated.cgn.centrallink.v1 import central_link_service_pb2 as link_pb
from generated.cgn.common.v1 import types_pb2

_log = logging.getLogger(__name__)

#: grpc ships no type stubs, so the servicer context is untyped.
Context: TypeAlias = Any


def _account_proto(account: Account, max_body_bytes: int = 0) -> acct_pb.Account:
    message = acct_pb.Account(
        account_id=account.account_id,
        kind=int(account.kind),  # type: ignore[arg-type]
        display_name=account.display_name,
        allowed_tiers=[int(t) for t in account.allowed_tiers],  # type: ignore[misc]
        tier=int(account.tier) if account.tier else None,  # type: ignore[arg-type]
        parent_account_id=account.parent_account_id,
        pseudonym=account.pseudonym,
        verifier_count=account.verifier_count,
        ethereum_address=account.ethereum_address,
        banned=account.banned,
        max_body_bytes=max_body_bytes,
    )
    message.created_at.FromDatetime(account.created_at)
    return message


class AccountAdmin(acct_grpc.AccountAdminServiceServicer):
    """Operator API over the account store."""

    def __init__(self, accounts: AccountStore, linker: Linker) -> None:
        self._accounts = accounts
        self._linker = linker

    async def CreateAccount(  # noqa: N802 - gRPC method name
        self, request: acct_pb.CreateAccountRequest, context: Context
    ) -> acct_pb.CreateAccountResponse:
        if request.kind == types_pb2.ACCOUNT_KIND_UNSPECIFIED:
            raise InvalidArgumentError("kind is required")
        try:
            kind = AccountKind(request.kind)
            tiers = [Tier(t) for t in request.allowed_tiers]
            tier = Tier(request.tier) if request.HasField("tier") else None
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from exc
        created = await self._accounts.create(
            kind,
            display_name=request.display_name,
            allowed_tiers=tiers,
            tier=tier,
            parent_account_id=request.parent_account_id,
            ethereum_address=request.ethereum_address,
            max_body_bytes=request.max_body_bytes,
        )
        return acct_pb.CreateAccountResponse(
            account=_account_proto(created.account, request.max_body_bytes),
            api_key=created.api_key,
            password=created.password,
        )

    async def GetAccount(  # noqa: N802
        self, request: acct_pb.GetAccountRequest, context: Context
    ) -> acct_pb.GetAccountResponse:
        account = await self._accounts.get(request.account_id)
        limit = await self._accounts.max_body_bytes(account.account_id)
        return acct_pb.GetAccountResponse(account=_account_proto(account, limit))

    async def ListAccounts(  # noqa: N802
        self, request: acct_pb.ListAccountsRequest, context: Context
    ) -> acct_pb.ListAccountsResponse:
        kind = None
        if request.HasField("kind"):
            if request.kind == types_pb2.ACCOUNT_KIND_UNSPECIFIED:
                raise InvalidArgumentError("kind: omit it for every kind; UNSPECIFIED is rejected")
            kind = AccountKind(request.kind)
        accounts = await self._accounts.list(kind)
        limits = await self._accounts.all_max_body_bytes()
        return acct_pb.ListAccountsResponse(
            accounts=[_account_proto(a, limits.get(a.account_id, 0)) for a in accounts]
        )

    async def BanAccount(  # noqa: N802
        self, request: acct_pb.BanAccountRequest, context: Context
    ) -> acct_pb.BanAccountResponse:
        account = await self._accounts.set_banned(request.account_id, True)
        if account.kind is AccountKind.MINER:
            directive = link_pb.Directive(directive_id=new_id("dir"))
            directive.ban_miner.miner_id = account.account_id
            directive.ban_miner.reason = "banned by an operator"
            await self._linker.broadcast(directive)
        await self._revoke_sessions(account.account_id)
        return acct_pb.BanAccountResponse(account=_account_proto(account))

    async def RevokeAccountSessions(  # noqa: N802
        self, request: acct_pb.RevokeAccountSessionsRequest, context: Context
    ) -> acct_pb.RevokeAccountSessionsResponse:
        await self._accounts.get(request.account_id)
        epoch, told = await self._revoke_sessions(request.account_id)
        return acct_pb.RevokeAccountSessionsResponse(session_epoch=epoch, nodes_told=told)

    async def _revoke_sessions(self, account_id: str) -> tuple[int, int]:
        """Raises the account's session epoch and tells every linked node at once; nodes
        not linked now learn it when they next link. Returns (epoch, nodes told)."""
        epoch = await self._linker.revocations.revoke_account(account_id)
        told = await self._linker.broadcast(
            revocation_directive(AccountRevocation(account_id, epoch))
        )
        log_event(
            _log, "account_sessions_revoked", account_id=account_id, epoch=epoch, nodes_told=told
        )
        return epoch, told

    async def UpdateAccount(  # noqa: N802
        self, request: acct_pb.UpdateAccountRequest, context: Context
    ) -> acct_pb.UpdateAccountResponse:
        """Changes where an account's payouts go (Ethereum address, charity and share) and its
        request-body limit; the other settings of UpdateAccountRequest are not changeable yet
        (UNIMPLEMENTED)."""
        if (
            request.display_name
            or request.allowed_tiers
            or request.HasField("tier")
            or request.verifier_count
            or request.HasField("default_data_ttl")
        ):
            raise UnimplementedError(
                "only ethereum_address, the charity and max_body_bytes can be changed in this "
                "version"
            )
        if request.HasField("max_body_bytes"):
            await self._accounts.set_max_body_bytes(request.account_id, request.max_body_bytes)
        account, choice = await self._accounts.update_payouts(
            request.account_id,
            ethereum_address=request.ethereum_address or None,
            charity_account_id=(
                request.charity_account_id if request.HasField("charity_account_id") else None
            ),
            charity_share_ppm=(
                request.charity_share_ppm if request.HasField("charity_share_ppm") else None
            ),
        )
        message = _account_proto(account, await self._accounts.max_body_bytes(account.account_id))
        message.charity_account_id = choice.charity_account_id
        message.charity_share_ppm = choice.charity_share_ppm
        return acct_pb.UpdateAccountResponse(account=message)

    async def UnbanAccount(  # noqa: N802
        self, request: acct_pb.UnbanAccountRequest, context: Context
    ) -> acct_pb.UnbanAccountResponse:
        account = await self._accounts.set_banned(request.account_id, False)
        return acct_pb.UnbanAccountResponse(account=_account_proto(account))


class Registry(reg_grpc.RegistryServiceServicer):
    """Operator API over the node registry; registering a node starts dialing it."""

    def __init__(self, nodes: NodeRegistry, accounts: AccountStore, linker: Linker) -> None:
        self._nodes = nodes
        self._accounts = accounts
        self._linker = linker

    def _record_proto(self, node: NodeRecord) -> reg_pb.NodeRecord:
        return reg_pb.NodeRecord(
            node_id=node.node_id,
            central_link_address=node.central_link_address,
            work_address=node.work_address,
            miner_link_address=node.miner_link_address,
            status_address=node.status_address,
            location=types_pb2.GeoLocation(
                latitude_microdegrees=node.latitude_microdegrees,
                longitude_microdegrees=node.longitude_microdegrees,
                region=node.region,
            ),
            linked=self._linker.is_linked(node.node_id),
        )

    async def RegisterNode(  # noqa: N802
        self, request: reg_pb.RegisterNodeRequest, context: Context
    ) -> reg_pb.RegisterNodeResponse:
        n = request.node
        if not n.node_id or not n.central_link_address:
            raise InvalidArgumentError("node_id and central_link_address are required")
        account = await self._accounts.get(n.node_id)
        if account.kind is not AccountKind.NODE:
            raise InvalidArgumentError(f"{n.node_id!r} is not a node account")
        record = await self._nodes.upsert(
            NodeRecord(
                node_id=n.node_id,
                central_link_address=n.central_link_address,
                work_address=n.work_address,
                miner_link_address=n.miner_link_address,
                status_address=n.status_address,
                latitude_microdegrees=n.location.latitude_microdegrees,
                longitude_microdegrees=n.location.longitude_microdegrees,
                region=n.location.region,
            )
        )
        await self._linker.ensure(record)
        return reg_pb.RegisterNodeResponse(node=self._record_proto(record))

    async def ListNodes(  # noqa: N802
        self, request: reg_pb.ListNodesRequest, context: Context
    ) -> reg_pb.ListNodesResponse:
        nodes = await self._nodes.list()
        return reg_pb.ListNodesResponse(nodes=[self._record_proto(n) for n in nodes])

    async def DeregisterNode(  # noqa: N802
        self, request: reg_pb.DeregisterNodeRequest, context: Context
    ) -> reg_pb.DeregisterNodeResponse:
        await self._linker.drop(request.node_id)
        return reg_pb.DeregisterNodeResponse(removed=await self._nodes.remove(request.node_id))


ACCOUNT_ADMIN_SERVICE = acct_pb.DESCRIPTOR.services_by_name["AccountAdminService"].full_name
REGISTRY_SERVICE = reg_pb.DESCRIPTOR.services_by_name["RegistryService"].full_name

#: Every admin method needs an operator certificate of the operator CA (mutual TLS).
ADMIN_RULES: Rules = {
    **rules_for(
        ACCOUNT_ADMIN_SERVICE,
        [
            "CreateAccount",
            "GetAccount",
            "ListAccounts",
            "UpdateAccount",
            "ResetApiKey",
            "ResetPassword",
            "BanAccount",
            "UnbanAccount",
            "RevokeAccountSessions",
        ],
        Rule.peer(Role.OPERATOR),
    ),
    **rules_for(
        REGISTRY_SERVICE,
        [
            "RegisterNode",
            "ListNodes",
            "DeregisterNode",
            "RegisterDService",
            "ListDServices",
            "SetFeeAgreement",
            "AddTrustedMeasurement",
        ],
        Rule.peer(Role.OPERATOR),
    ),
}


def add_admin_services(
    server: GrpcServer, accounts: AccountStore, nodes: NodeRegistry, linker: Linker
) -> None:
    """Registers the admin servicers on ``server``."""
    server.add(
        acct_grpc.add_AccountAdminServiceServicer_to_server,
        # RPCs not implemented yet answer UNIMPLEMENTED from the generated base class.
        AccountAdmin(accounts, linker),  # type: ignore[abstract]
        ACCOUNT_ADMIN_SERVICE,
    )
    server.add(
        reg_grpc.add_RegistryServiceServicer_to_server,
        Registry(nodes, accounts, linker),  # type: ignore[abstract]
        REGISTRY_SERVICE,
    )
