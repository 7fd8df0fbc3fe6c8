"""Runs Central: the admin services on loopback and one outbound link per registered node."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from central._link import Linker
from central._rpc import add_admin_services
from central.accounts import AccountStore
from central.config import CentralConfig
from central.db import open_engine
from central.registry import NodeRegistry
from cgn_common.logs import log_event
from cgn_common.ready import write_ready_file
from cgn_common.rpc import GrpcServer, TlsConfig
from cgn_common.signals import wait_for_stop

_log = logging.getLogger(__name__)


async def serve(config: CentralConfig, ready_file: Path | None = None) -> None:
    """Serves until SIGINT or SIGTERM."""
    engine = await open_engine(config.database_url)
    tls = TlsConfig(config.tls_cert_file, config.tls_key_file, config.tls_ca_file)
    accounts = AccountStore(engine)
    nodes = NodeRegistry(engine)
    linker = Linker(accounts, config.replica_id, tls)
    admin = GrpcServer("central-admin")
    add_admin_services(admin, accounts, nodes, linker, config.operator_token)
    await admin.start(config.admin_listen)
    for node in await nodes.list():
        await linker.ensure(node)
    write_ready_file(ready_file, {"admin": admin.address})
    log_event(_log, "central_ready", admin=admin.address)
    try:
        await wait_for_stop()
    finally:
        log_event(_log, "central_stopping")
        await linker.close()
        await admin.stop()
        await engine.dispose()


def run(config: CentralConfig, ready_file: Path | None = None) -> None:
    """Blocking entry point for ``cgn central``."""
    asyncio.run(serve(config, ready_file))
