"""A small client of Central's admin services, used by the sandbox and ``cgn accounts``
(mutual TLS with an operator certificate)."""

from __future__ import annotations

from collections.abc import Sequence

from cgn_common.rpc import open_channel
from cgn_common.tls import TlsConfig
from cgn_common.types import AccountKind, Tier
from generated.cgn.admin.v1 import account_admin_service_pb2 as acct_pb
from generated.cgn.admin.v1 import account_admin_service_pb2_grpc as acct_grpc
from generated.cgn.admin.v1 import registry_service_pb2 as reg_pb
from generated.cgn.admin.v1 import registry_service_pb2_grpc as reg_grpc


class AdminClient:
    """Operator calls to Central."""

    def __init__(self, address: str, tls: TlsConfig) -> None:
        self._channel = open_channel(address, tls)
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._accounts = acct_grpc.AccountAdminServiceStub(self._channel)
        self._registry = reg_grpc.RegistryServiceStub(self._channel)

    async def create_account(
        self,
        kind: AccountKind,
        display_name: str,
        *,
        tier: Tier | None = None,
        allowed_tiers: Sequence[Tier] = (),
        parent_account_id: str = "",
    ) -> tuple[str, str]:
        """Creates an account; returns (account_id, api_key)."""
        response: acct_pb.CreateAccountResponse = await self._accounts.CreateAccount(
            acct_pb.CreateAccountRequest(
                kind=int(kind),  # type: ignore[arg-type]
                display_name=display_name,
                tier=int(tier) if tier else None,  # type: ignore[arg-type]
                allowed_tiers=[int(t) for t in allowed_tiers],  # type: ignore[misc]
                parent_account_id=parent_account_id,
            ),
            metadata=self._metadata,
            timeout=30,
        )
        return response.account.account_id, response.api_key

    async def register_node(self, node_id: str, endpoints: dict[str, str]) -> None:
        """Registers a node; Central starts dialing it."""
        await self._registry.RegisterNode(
            reg_pb.RegisterNodeRequest(
                node=reg_pb.NodeRecord(
                    node_id=node_id,
                    central_link_address=endpoints["central_link"],
                    work_address=endpoints["work"],
                    miner_link_address=endpoints["miner_link"],
                    status_address=endpoints["status"],
                )
            ),
            metadata=self._metadata,
            timeout=30,
        )

    async def node_linked(self, node_id: str) -> bool:
        """True while Central holds a link to the node."""
        response: reg_pb.ListNodesResponse = await self._registry.ListNodes(
            reg_pb.ListNodesRequest(), metadata=self._metadata, timeout=10
        )
        return any(n.node_id == node_id and n.linked for n in response.nodes)

    async def ban_account(self, account_id: str, reason: str = "") -> None:
        """Bans an account; its sessions end and, for a miner, its connections close."""
        await self._accounts.BanAccount(
            acct_pb.BanAccountRequest(account_id=account_id, reason=reason), timeout=30
        )

    async def unban_account(self, account_id: str) -> None:
        """Lifts a ban (sessions revoked by it stay revoked)."""
        await self._accounts.UnbanAccount(
            acct_pb.UnbanAccountRequest(account_id=account_id), timeout=30
        )

    async def revoke_account_sessions(self, account_id: str) -> tuple[int, int]:
        """Ends every session of an account on every node; returns (new epoch, nodes told
        at once)."""
        request = acct_pb.RevokeAccountSessionsRequest(account_id=account_id)
        response: acct_pb.RevokeAccountSessionsResponse = (
            await self._accounts.RevokeAccountSessions(request, timeout=30)
        )
        return response.session_epoch, response.nodes_told

    async def update_payouts(
        self,
        account_id: str,
        *,
        ethereum_address: str = "",
        charity_account_id: str | None = None,
        charity_share_ppm: int | None = None,
    ) -> acct_pb.Account:
        """Changes where an account's payouts go; returns the account as Central now has it."""
        request = acct_pb.UpdateAccountRequest(
            account_id=account_id, ethereum_address=ethereum_address
        )
        if charity_account_id is not None:
            request.charity_account_id = charity_account_id
        if charity_share_ppm is not None:
            request.charity_share_ppm = charity_share_ppm
        response: acct_pb.UpdateAccountResponse = await self._accounts.UpdateAccount(
            request, timeout=30
        )
        return response.account

    async def set_max_body_bytes(self, account_id: str, max_body_bytes: int) -> acct_pb.Account:
        """Sets an account's request-body limit (0: Central's default); returns the account."""
        request = acct_pb.UpdateAccountRequest(account_id=account_id, max_body_bytes=max_body_bytes)
        response: acct_pb.UpdateAccountResponse = await self._accounts.UpdateAccount(
            request, timeout=30
        )
        return response.account

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()
