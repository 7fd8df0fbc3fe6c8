"""Runs Central: the admin services (mutual TLS, operators only) and one supervised outbound
link per registered node."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from central._guard import dispose
from central._link import Linker
from central._rpc import ADMIN_RULES, add_admin_services
from central.accounts import AccountStore
from central.config import CentralConfig
from central.db import open_engine
from central.registry import NodeRegistry
from central.revocations import RevocationStore
from cgn_common.logs import log_event
from cgn_common.ready import write_ready_file
from cgn_common.rpc import GrpcServer
from cgn_common.signals import wait_for_stop
from cgn_common.tasks import Supervisor
from cgn_common.tls import ClientAuth, TlsConfig, warn_if_plaintext

_log = logging.getLogger(__name__)


class Central:
    """One Central replica built from its config; ``start`` binds and dials, ``stop`` ends."""

    def __init__(self, config: CentralConfig) -> None:
        self.config = config
        self.tls = TlsConfig(
            config.tls_cert_file,
            config.tls_key_file,
            config.tls_ca_file,
            config.insecure_plaintext,
            crl_file=config.tls_crl_file,
        )
        self.tls.check(need_cert=True)
        warn_if_plaintext(self.tls, "central")
        self.supervisor = Supervisor("central")
        self.admin = GrpcServer("central-admin", self.tls, ClientAuth.REQUIRED, ADMIN_RULES)

    async def start(self) -> dict[str, str]:
        """Opens the database, serves the admin port and dials every registered node."""
        self.engine = await open_engine(self.config.database_url)
        self.accounts = AccountStore(
            self.engine, default_max_body_bytes=self.config.default_max_body_bytes
        )
        self.nodes = NodeRegistry(self.engine)
        self.revocations = RevocationStore(self.engine)
        self.linker = Linker(
            self.accounts, self.revocations, self.config.replica_id, self.tls, self.supervisor
        )
        add_admin_services(self.admin, self.accounts, self.nodes, self.linker)
        await self.admin.start(self.config.admin_listen)
        for node in await self.nodes.list():
            await self.linker.ensure(node)
        return {"admin": self.admin.address}

    async def stop(self) -> None:
        """Closes the links, the admin port and the database."""
        await self.linker.close()
        await self.admin.stop()
        await self.supervisor.close()
        self.accounts.close()
        await dispose(self.engine)


async def serve(config: CentralConfig, ready_file: Path | None = None) -> None:
    """Serves until SIGINT or SIGTERM."""
    central = Central(config)
    endpoints = await central.start()
    write_ready_file(ready_file, endpoints)
    log_event(_log, "central_ready", admin=endpoints["admin"])
    try:
        await wait_for_stop()
    finally:
        log_event(_log, "central_stopping")
        await central.stop()


def run(config: CentralConfig, ready_file: Path | None = None) -> None:
    """Blocking entry point for ``cgn central``."""
    asyncio.run(serve(config, ready_file))
