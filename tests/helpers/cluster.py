"""Central and a node in this process, on loopback with real gRPC servers and mutual TLS."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from central.config import CentralConfig
from central.registry import NodeRecord
from central.server import Central
from cgn_common.certs import Role
from cgn_common.rpc import open_channel
from cgn_common.types import AccountKind
from cgn_node.config import NodeConfig
from cgn_node.server import Node
from generated.cgn.work.v1 import session_service_pb2 as session_pb
from generated.cgn.work.v1 import session_service_pb2_grpc as session_grpc
from tests.helpers.pki import Pki


@dataclass
class Enterprise:
    """An enterprise account with a session on the node."""

    account_id: str
    pseudonym: str
    token: str

    @property
    def bearer(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata carrying the session."""
        return (("authorization", f"Bearer {self.token}"),)


@dataclass
class Cluster:
    """A linked Central and node."""

    pki: Pki
    central: Central
    node: Node
    node_id: str
    endpoints: dict[str, str]
    central_config: CentralConfig

    async def enterprise(self, name: str) -> Enterprise:
        """A new enterprise account with a session on the node (its bearer metadata in
        ``bearer``)."""
        created = await self.central.accounts.create(AccountKind.ENTERPRISE, name)
        async with open_channel(self.endpoints["work"], self.pki.client_only()) as channel:
            session = await session_grpc.SessionServiceStub(channel).CreateSession(
                session_pb.CreateSessionRequest(
                    account_id=created.account.account_id, api_key=created.api_key
                ),
                timeout=10,
            )
        return Enterprise(created.account.account_id, created.account.pseudonym, session.token)

    async def restart_central(self) -> None:
        """Stops Central and starts a new replica process-equivalent on the same database."""
        await self.central.stop()
        self.central = Central(self.central_config)
        await self.central.start()


def central_config(pki: Pki, db: Path, replica: str = "central-1") -> CentralConfig:
    """Central on ``db`` with a Central certificate of ``pki``."""
    tls = pki.issue(Role.CENTRAL, replica)
    return CentralConfig(
        database_url=f"sqlite+aiosqlite:///{db}",
        admin_listen="127.0.0.1:0",
        replica_id=replica,
        tls_cert_file=tls.cert_file,
        tls_key_file=tls.key_file,
        tls_ca_file=tls.ca_file,
    )


async def start_cluster(
    tmp_path: Path,
    pki: Pki,
    central_timeout_s: int = 5,
    central_options: dict[str, Any] | None = None,
    **node_options: Any,
) -> Cluster:
    """Starts Central, creates and registers a node account, starts the node (``NodeConfig``
    fields in ``node_options``, ``CentralConfig`` fields in ``central_options``)."""
    config = replace(central_config(pki, tmp_path / "central.db"), **(central_options or {}))
    central = Central(config)
    await central.start()
    node_id = (await central.accounts.create(AccountKind.NODE, "test node")).account.account_id
    tls = pki.issue(Role.NODE, node_id)
    node_options.setdefault("ledger_url", f"sqlite:///{tmp_path / 'ledger.db'}")
    node = Node.from_config(
        NodeConfig(
            node_id=node_id,
            work_listen="127.0.0.1:0",
            internal_listen="127.0.0.1:0",
            miner_link_listen="127.0.0.1:0",
            status_listen="127.0.0.1:0",
            central_link_listen="127.0.0.1:0",
            central_timeout_s=central_timeout_s,
            tls_cert_file=tls.cert_file,
            tls_key_file=tls.key_file,
            tls_ca_file=tls.ca_file,
            **node_options,
        )
    )
    endpoints = await node.start()
    record = NodeRecord(node_id=node_id, central_link_address=endpoints["central_link"])
    await central.nodes.upsert(record)
    await central.linker.ensure(record)
    return Cluster(pki, central, node, node_id, endpoints, config)


async def stop_cluster(cluster: Cluster) -> None:
    """Stops Central (its links first) and the node."""
    await cluster.central.stop()
    await cluster.node.stop()
