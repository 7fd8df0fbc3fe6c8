"""Runs a regional node: four gRPC listeners (work, miner link, status, central link)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cgn_common.errors import InvalidArgumentError
from cgn_common.logs import log_event
from cgn_common.ready import write_ready_file
from cgn_common.rpc import GrpcServer, TlsConfig
from cgn_common.signals import wait_for_stop
from cgn_node._central_link import CentralLink
from cgn_node._miner_link import MinerLink
from cgn_node._rpc import Sessions, Status, Work
from cgn_node.broker import Broker
from cgn_node.config import NodeConfig
from cgn_node.recorder import LogRecorder, WorkRecorder
from cgn_node.sessions import SessionIssuer
from generated.cgn.centrallink.v1 import central_link_service_pb2 as central_pb
from generated.cgn.centrallink.v1 import central_link_service_pb2_grpc as central_grpc
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as link_pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as link_grpc
from generated.cgn.node.v1 import status_service_pb2 as status_pb
from generated.cgn.node.v1 import status_service_pb2_grpc as status_grpc
from generated.cgn.work.v1 import session_service_pb2 as session_pb
from generated.cgn.work.v1 import session_service_pb2_grpc as session_grpc
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc

_log = logging.getLogger(__name__)


class Node:
    """A node built from its config; ``start`` binds, ``stop`` ends it."""

    def __init__(self, config: NodeConfig, recorder: WorkRecorder | None = None) -> None:
        if not config.node_id or not config.node_key:
            raise InvalidArgumentError("node_id and node_key are required")
        self.config = config
        tls = TlsConfig(config.tls_cert_file, config.tls_key_file, config.tls_ca_file)
        self.broker = Broker(
            dispatch_attempts=config.dispatch_attempts,
            danger_threshold=config.queue_danger_threshold,
            queue_timeout_s=config.queue_timeout_s,
            static_dservices=config.dservices,
        )
        self.central = CentralLink(config.node_id, config.node_key, config.central_timeout_s)
        issuer = SessionIssuer(
            config.session_secret.reveal().encode(), config.session_ttl_s, config.node_id
        )
        self.work_server = GrpcServer("node-work", tls)
        self.work_server.add(
            work_grpc.add_WorkServiceServicer_to_server,
            # CallStream is not implemented yet: the generated base answers UNIMPLEMENTED.
            Work(self.broker, issuer, recorder or LogRecorder(), config.node_id),  # type: ignore[abstract]
            work_pb.DESCRIPTOR.services_by_name["WorkService"].full_name,
        )
        self.work_server.add(
            session_grpc.add_SessionServiceServicer_to_server,
            Sessions(issuer, self.central),
            session_pb.DESCRIPTOR.services_by_name["SessionService"].full_name,
        )
        self.miner_server = GrpcServer("node-miner-link", tls)
        self.miner_server.add(
            link_grpc.add_MinerLinkServiceServicer_to_server,
            MinerLink(self.broker, self.central, config.node_id, config.ack_deadline_ms / 1000),
            link_pb.DESCRIPTOR.services_by_name["MinerLinkService"].full_name,
        )
        self.status_server = GrpcServer("node-status", tls)
        self.status_server.add(
            status_grpc.add_NodeStatusServiceServicer_to_server,
            Status(self.broker, config.node_id, config.region, self.central),
            status_pb.DESCRIPTOR.services_by_name["NodeStatusService"].full_name,
        )
        self.central_server = GrpcServer("node-central-link", tls)
        self.central_server.add(
            central_grpc.add_CentralLinkServiceServicer_to_server,
            self.central,
            central_pb.DESCRIPTOR.services_by_name["CentralLinkService"].full_name,
        )

    async def start(self) -> dict[str, str]:
        """Binds every listener; returns their bound addresses by name."""
        c = self.config
        return {
            "work": await self.work_server.start(c.work_listen),
            "miner_link": await self.miner_server.start(c.miner_link_listen),
            "status": await self.status_server.start(c.status_listen),
            "central_link": await self.central_server.start(c.central_link_listen),
        }

    async def stop(self) -> None:
        """Stops every listener, letting calls in flight finish briefly."""
        for server in (
            self.work_server,
            self.miner_server,
            self.status_server,
            self.central_server,
        ):
            await server.stop()


async def serve(config: NodeConfig, ready_file: Path | None = None) -> None:
    """Serves until SIGINT or SIGTERM."""
    node = Node(config)
    endpoints = await node.start()
    write_ready_file(ready_file, endpoints, node_id=config.node_id)
    log_event(_log, "node_ready", node_id=config.node_id, endpoints=endpoints)
    try:
        await wait_for_stop()
    finally:
        log_event(_log, "node_stopping")
        await node.stop()


def run(config: NodeConfig, ready_file: Path | None = None) -> None:
    """Blocking entry point for ``cgn node``."""
    asyncio.run(serve(config, ready_file))
