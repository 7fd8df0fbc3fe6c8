"""Runs a regional node: five gRPC listeners (work, internal, miner link, status, central
link), each with its TLS mode and authorization table (docs/security.md)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from pathlib import Path

from cgn_common import loop as event_loop
from cgn_common.certs import Role
from cgn_common.errors import InvalidArgumentError
from cgn_common.interceptors import Rule, Rules, rules_for
from cgn_common.logs import log_event
from cgn_common.ready import write_ready_file
from cgn_common.rpc import GrpcServer
from cgn_common.signals import wait_for_stop
from cgn_common.tasks import Supervisor
from cgn_common.tls import ClientAuth, TlsConfig, warn_if_plaintext
from cgn_node._central_link import CentralLink
from cgn_node._ledger_view import LedgerView
from cgn_node._miner_link import MinerLink
from cgn_node._rpc import Sessions, Status, Work
from cgn_node.broker import Broker
from cgn_node.config import NodeConfig
from cgn_node.ledger_recorder import LedgerRecorder, Pseudonyms
from cgn_node.recorder import WorkRecorder
from cgn_node.sessions import RevocationView, SessionIssuer, session_key
from cgn_node.standing import StandingChecker
from generated.cgn.centrallink.v1 import central_link_service_pb2 as central_pb
from generated.cgn.centrallink.v1 import central_link_service_pb2_grpc as central_grpc
from generated.cgn.ledger.v1 import ledger_service_pb2 as ledger_pb
from generated.cgn.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as link_pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as link_grpc
from generated.cgn.node.v1 import status_service_pb2 as status_pb
from generated.cgn.node.v1 import status_service_pb2_grpc as status_grpc
from generated.cgn.work.v1 import session_service_pb2 as session_pb
from generated.cgn.work.v1 import session_service_pb2_grpc as session_grpc
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from settlement.ledger import LedgerStore
from settlement.ledger_db import open_ledger
from settlement.ledger_writer import LedgerWriter
from settlement.rates import FreshRates, SandboxRateSource

_log = logging.getLogger(__name__)

WORK_SERVICE = work_pb.DESCRIPTOR.services_by_name["WorkService"].full_name
SESSION_SERVICE = session_pb.DESCRIPTOR.services_by_name["SessionService"].full_name
MINER_LINK_SERVICE = link_pb.DESCRIPTOR.services_by_name["MinerLinkService"].full_name
STATUS_SERVICE = status_pb.DESCRIPTOR.services_by_name["NodeStatusService"].full_name
CENTRAL_LINK_SERVICE = central_pb.DESCRIPTOR.services_by_name["CentralLinkService"].full_name
LEDGER_SERVICE = ledger_pb.DESCRIPTOR.services_by_name["LedgerService"].full_name

#: The ledger's public view (anyone) and owner view (the owning enterprise's session).
LEDGER_PUBLIC_METHODS = ("ListRows", "GetRow")
LEDGER_OWNER_METHODS = ("GetPrivateRow", "ListRowsByRequest")

#: WorkService: run a request (whole, or streamed), and read a streamed answer of Call.
WORK_METHODS = ("Call", "CallStream", "ReadAnswer")

#: The public work port: internal gRPC clients prove themselves in band.
WORK_RULES: Rules = {
    **rules_for(WORK_SERVICE, WORK_METHODS, Rule.with_session()),
    **rules_for(
        SESSION_SERVICE,
        ["CreateSession"],
        Rule.checked_in_band("account id and API key, verified by Central"),
    ),
    **rules_for(
        SESSION_SERVICE, ["RevokeSession"], Rule.checked_in_band("the session token revoked")
    ),
    **rules_for(LEDGER_SERVICE, LEDGER_PUBLIC_METHODS, Rule.open_to_all()),
    **rules_for(LEDGER_SERVICE, LEDGER_OWNER_METHODS, Rule.with_session()),
}
#: The internal port: the same services, for gateways holding a certificate of the CA.
INTERNAL_RULES: Rules = {
    **rules_for(WORK_SERVICE, WORK_METHODS, Rule.with_session(Role.GATEWAY)),
    **rules_for(SESSION_SERVICE, ["CreateSession", "RevokeSession"], Rule.peer(Role.GATEWAY)),
    **rules_for(LEDGER_SERVICE, LEDGER_PUBLIC_METHODS, Rule.peer(Role.GATEWAY)),
    **rules_for(LEDGER_SERVICE, LEDGER_OWNER_METHODS, Rule.with_session(Role.GATEWAY)),
}
MINER_LINK_RULES: Rules = {
    **rules_for(
        MINER_LINK_SERVICE,
        ["Connect"],
        Rule.checked_in_band("miner id and API key in MinerHello, verified by Central"),
    ),
    **rules_for(
        MINER_LINK_SERVICE,
        ["Exchange"],
        Rule.checked_in_band("the dispatch token in ExchangeOpen, sent only to its miner"),
    ),
}
STATUS_RULES: Rules = {
    **rules_for(STATUS_SERVICE, ["GetStatus"], Rule.open_to_all()),
    **rules_for(LEDGER_SERVICE, LEDGER_PUBLIC_METHODS, Rule.open_to_all()),
}
CENTRAL_LINK_RULES: Rules = rules_for(CENTRAL_LINK_SERVICE, ["Connect"], Rule.peer(Role.CENTRAL))


class Node:
    """A node built from its config; ``start`` binds, ``stop`` ends it."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        broker: Broker,
        issuer: SessionIssuer,
        recorder: WorkRecorder | None = None,
    ) -> None:
        if not config.node_id:
            raise InvalidArgumentError("node_id is required")
        tls = TlsConfig(
            config.tls_cert_file,
            config.tls_key_file,
            config.tls_ca_file,
            config.insecure_plaintext,
            crl_file=config.tls_crl_file,
        )
        tls.check(need_cert=True)
        warn_if_plaintext(tls, "node")
        self.config = config
        self.supervisor = Supervisor("node")
        self.broker = broker
        self.central = CentralLink(config.node_id, config.central_timeout_s, self.supervisor)
        self.issuer = issuer
        self.standing = StandingChecker(
            self.central,
            self.broker,
            issuer.revocations,
            issuer.ttl_s,
            self.supervisor,
            lambda: self.central.connected,
        )
        self.central.on_links_changed = self.standing.links_changed
        self.central.on_revoke_sessions = issuer.revocations.account_revoked
        self.central.on_revoke_session = issuer.revocations.session_revoked
        self.ledger: LedgerWriter | None = None
        self.pseudonyms = Pseudonyms(self.central)
        if recorder is None:
            recorder = self._ledger_recorder(config)
        self.recorder = recorder
        self.work = work = Work(
            self.broker,
            recorder,
            config.node_id,
            self.supervisor,
            config.max_timeout_ms / 1000,
            max_body_bytes=config.max_work_body_bytes,
            max_stream_body_bytes=config.max_stream_body_bytes,
            spool_dir=config.spool_dir or None,
            max_spool_bytes=config.max_spool_bytes,
        )
        sessions = Sessions(self.issuer, self.central)
        self.work_server = GrpcServer(
            "node-work", tls, ClientAuth.NONE, WORK_RULES, self.issuer.verify
        )
        self.internal_server = GrpcServer(
            "node-internal", tls, ClientAuth.REQUIRED, INTERNAL_RULES, self.issuer.verify
        )
        for server in (self.work_server, self.internal_server):
            server.add(work_grpc.add_WorkServiceServicer_to_server, work, WORK_SERVICE)
            server.add(session_grpc.add_SessionServiceServicer_to_server, sessions, SESSION_SERVICE)
        self.miner_server = GrpcServer("node-miner-link", tls, ClientAuth.NONE, MINER_LINK_RULES)
        self.miner_link = MinerLink(
            self.broker,
            self.central,
            config.node_id,
            ack_deadline_s=config.ack_deadline_ms / 1000,
            lease_s=config.lease_ms / 1000,
        )
        self.miner_server.add(
            link_grpc.add_MinerLinkServiceServicer_to_server, self.miner_link, MINER_LINK_SERVICE
        )
        self.central.on_ban_miner = self.miner_link.ban
        self.status_server = GrpcServer("node-status", tls, ClientAuth.NONE, STATUS_RULES)
        self.status_server.add(
            status_grpc.add_NodeStatusServiceServicer_to_server,
            Status(self.broker, config.node_id, config.region, self.central),
            STATUS_SERVICE,
        )
        if self.ledger is not None:  # a node given another recorder (tests) has no views
            view = LedgerView(self.ledger.store, self.pseudonyms, _page_token_key(config))
            for server in (self.work_server, self.internal_server, self.status_server):
                server.add(ledger_grpc.add_LedgerServiceServicer_to_server, view, LEDGER_SERVICE)
        self.central_server = GrpcServer(
            "node-central-link", tls, ClientAuth.REQUIRED, CENTRAL_LINK_RULES
        )
        self.central_server.add(
            central_grpc.add_CentralLinkServiceServicer_to_server,
            self.central,
            CENTRAL_LINK_SERVICE,
        )

    def _ledger_recorder(self, config: NodeConfig) -> LedgerRecorder:
        """The node's ledger: its database, background writer and recorder."""
        if not config.ledger_url:
            raise InvalidArgumentError("ledger_url is required: every node records its work")
        store = LedgerStore(open_ledger(config.ledger_url), config.node_id)
        self.ledger = LedgerWriter(store, self.supervisor)
        rates = FreshRates(SandboxRateSource({config.currency: config.sandbox_rate_nano_per_coin}))
        return LedgerRecorder(self.ledger, self.pseudonyms, rates, config.node_id, config.currency)

    @classmethod
    def from_config(cls, config: NodeConfig, recorder: WorkRecorder | None = None) -> Node:
        """The production node: its broker and session issuer built from ``config``."""
        broker = Broker(
            dispatch_attempts=config.dispatch_attempts,
            danger_threshold=config.queue_danger_threshold,
            account_limit=config.account_limit,
            appear_grace_s=config.appear_grace_ms / 1000,
            static_dservices=config.dservices,
        )
        issuer = SessionIssuer(
            session_key(config),
            config.session_ttl_s,
            config.node_id,
            RevocationView(config.sessions_max_stale_ms / 1000),
        )
        return cls(config, broker=broker, issuer=issuer, recorder=recorder)

    def _servers(self) -> tuple[GrpcServer, ...]:
        return (
            self.work_server,
            self.internal_server,
            self.miner_server,
            self.status_server,
            self.central_server,
        )

    async def start(self) -> dict[str, str]:
        """Binds every listener; returns their bound addresses by name."""
        c = self.config
        return {
            "work": await self.work_server.start(c.work_listen),
            "internal": await self.internal_server.start(c.internal_listen),
            "miner_link": await self.miner_server.start(c.miner_link_listen),
            "status": await self.status_server.start(c.status_listen),
            "central_link": await self.central_server.start(c.central_link_listen),
        }

    async def stop(self) -> None:
        """Drains the miners (their work in flight finishes within ``drain_grace_ms``), then
        stops every listener, letting calls in flight finish briefly."""
        try:
            await self.miner_link.drain(self.config.drain_grace_ms / 1000)
        except Exception as exc:  # the listeners and the ledger must close whatever happened
            log_event(_log, "drain_failed", logging.ERROR, exc=exc)
        await self.central.close()
        await asyncio.gather(*(server.stop() for server in self._servers()))
        await self.work.finish_recording()
        if self.ledger is not None:
            await self.ledger.close()  # writes what calls that ended have recorded
            self.ledger.store.engine.dispose()
        await self.supervisor.close()


def _page_token_key(config: NodeConfig) -> bytes:
    """The ledger views' page-token key, derived from the session key so that tokens outlive
    a restart when the session key does (empty: a random key per start)."""
    key = session_key(config)
    return hmac.new(key, b"cgn ledger page token", hashlib.sha256).digest() if key else b""


async def serve(config: NodeConfig, ready_file: Path | None = None) -> None:
    """Serves until SIGINT or SIGTERM."""
    node = Node.from_config(config)
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
    event_loop.run(serve(config, ready_file))
