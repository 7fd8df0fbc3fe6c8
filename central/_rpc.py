"""Central's admin servicers (AccountAdminService, RegistryService): proto <-> domain."""

from __future__ import annotations

import hmac
from typing import Any, TypeAlias

from central._link import Linker
from central.accounts import Account, AccountStore
from central.registry import NodeRecord, NodeRegistry
from cgn_common.config import Secret
from cgn_common.errors import InvalidArgumentError, UnauthenticatedError
from cgn_common.rpc import GrpcServer, bearer_token, translate_errors
from cgn_common.types import AccountKind, Tier
from generated.cgn.admin.v1 import account_admin_service_pb2 as acct_pb
from generated.cgn.admin.v1 import account_admin_service_pb2_grpc as acct_grpc
from generated.cgn.admin.v1 import registry_service_pb2 as reg_pb
from generated.cgn.admin.v1 import registry_service_pb2_grpc as reg_grpc
from generated.cgn.common.v1 import types_pb2

#: grpc ships no type stubs, so the servicer context is untyped.
Context: TypeAlias = Any


def _check_operator(context: Context, token: Secret) -> None:
    presented = bearer_token(context)
    if not token or not hmac.compare_digest(presented.encode(), token.reveal().encode()):
        raise UnauthenticatedError("operator credentials required")


def _account_proto(account: Account) -> acct_pb.Account:
    message = acct_pb.Account(
        account_id=account.account_id,
        kind=int(account.kind),  # type: ignore[arg-type]
        display_name=account.display_name,
        allowed_tiers=[int(t) for t in account.allowed_tiers],  # type: ignore[misc]
        tier=int(account.tier or 0),  # type: ignore[arg-type]
        parent_account_id=account.parent_account_id,
        pseudonym=account.pseudonym,
        verifier_count=account.verifier_count,
        ethereum_address=account.ethereum_address,
        banned=account.banned,
    )
    message.created_at.FromDatetime(account.created_at)
    return message


class AccountAdmin(acct_grpc.AccountAdminServiceServicer):
    """Operator API over the account store."""

    def __init__(self, accounts: AccountStore, operator_token: Secret) -> None:
        self._accounts = accounts
        self._token = operator_token

    @translate_errors
    async def CreateAccount(  # noqa: N802 - gRPC method name
        self, request: acct_pb.CreateAccountRequest, context: Context
    ) -> acct_pb.CreateAccountResponse:
        _check_operator(context, self._token)
        if request.kind == types_pb2.ACCOUNT_KIND_UNSPECIFIED:
            raise InvalidArgumentError("kind is required")
        try:
            kind = AccountKind(request.kind)
            tiers = [Tier(t) for t in request.allowed_tiers]
            tier = Tier(request.tier) if request.tier else None
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from exc
        created = await self._accounts.create(
            kind,
            display_name=request.display_name,
            allowed_tiers=tiers,
            tier=tier,
            parent_account_id=request.parent_account_id,
            ethereum_address=request.ethereum_address,
        )
        return acct_pb.CreateAccountResponse(
            account=_account_proto(created.account),
            api_key=created.api_key,
            password=created.password,
        )

    @translate_errors
    async def GetAccount(  # noqa: N802
        self, request: acct_pb.GetAccountRequest, context: Context
    ) -> acct_pb.GetAccountResponse:
        _check_operator(context, self._token)
        account = await self._accounts.get(request.account_id)
        return acct_pb.GetAccountResponse(account=_account_proto(account))

    @translate_errors
    async def ListAccounts(  # noqa: N802
        self, request: acct_pb.ListAccountsRequest, context: Context
    ) -> acct_pb.ListAccountsResponse:
        _check_operator(context, self._token)
        kind = AccountKind(request.kind) if request.kind else None
        accounts = await self._accounts.list(kind)
        return acct_pb.ListAccountsResponse(accounts=[_account_proto(a) for a in accounts])

    @translate_errors
    async def BanAccount(  # noqa: N802
        self, request: acct_pb.BanAccountRequest, context: Context
    ) -> acct_pb.BanAccountResponse:
        _check_operator(context, self._token)
        account = await self._accounts.set_banned(request.account_id, True)
        return acct_pb.BanAccountResponse(account=_account_proto(account))

    @translate_errors
    async def UnbanAccount(  # noqa: N802
        self, request: acct_pb.UnbanAccountRequest, context: Context
    ) -> acct_pb.UnbanAccountResponse:
        _check_operator(context, self._token)
        account = await self._accounts.set_banned(request.account_id, False)
        return acct_pb.UnbanAccountResponse(account=_account_proto(account))


class Registry(reg_grpc.RegistryServiceServicer):
    """Operator API over the node registry; registering a node starts dialing it."""

    def __init__(
        self, nodes: NodeRegistry, accounts: AccountStore, linker: Linker, operator_token: Secret
    ) -> None:
        self._nodes = nodes
        self._accounts = accounts
        self._linker = linker
        self._token = operator_token

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

    @translate_errors
    async def RegisterNode(  # noqa: N802
        self, request: reg_pb.RegisterNodeRequest, context: Context
    ) -> reg_pb.RegisterNodeResponse:
        _check_operator(context, self._token)
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

    @translate_errors
    async def ListNodes(  # noqa: N802
        self, request: reg_pb.ListNodesRequest, context: Context
    ) -> reg_pb.ListNodesResponse:
        _check_operator(context, self._token)
        nodes = await self._nodes.list()
        return reg_pb.ListNodesResponse(nodes=[self._record_proto(n) for n in nodes])

    @translate_errors
    async def DeregisterNode(  # noqa: N802
        self, request: reg_pb.DeregisterNodeRequest, context: Context
    ) -> reg_pb.DeregisterNodeResponse:
        _check_operator(context, self._token)
        await self._linker.drop(request.node_id)
        return reg_pb.DeregisterNodeResponse(removed=await self._nodes.remove(request.node_id))


def add_admin_services(
    server: GrpcServer, accounts: AccountStore, nodes: NodeRegistry, linker: Linker, token: Secret
) -> None:
    """Registers the admin servicers on ``server``."""
    server.add(
        acct_grpc.add_AccountAdminServiceServicer_to_server,
        # RPCs not implemented yet answer UNIMPLEMENTED from the generated base class.
        AccountAdmin(accounts, token),  # type: ignore[abstract]
        acct_pb.DESCRIPTOR.services_by_name["AccountAdminService"].full_name,
    )
    server.add(
        reg_grpc.add_RegistryServiceServicer_to_server,
        Registry(nodes, accounts, linker, token),  # type: ignore[abstract]
        reg_pb.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    )
