"""A real gateway in front of a scripted node: the node's WorkService answered by a test's
servicer over mutual TLS on loopback, the gateway started as ``cgn gateway`` starts it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from cgn_common.certs import Role
from cgn_common.interceptors import Rule, rules_for
from cgn_common.rpc import GrpcServer
from cgn_common.tls import ClientAuth
from cgn_node.server import WORK_METHODS, WORK_SERVICE
from gateway.config import GatewayConfig
from gateway.server import start
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc
from tests.helpers.pki import Pki


def gateway_config(node_address: str, pki: Pki, **options: Any) -> GatewayConfig:
    """A loopback gateway's configuration for the node at ``node_address``, with its link
    certificate from ``pki`` and ``options`` (GatewayConfig fields) on top."""
    link = pki.issue(Role.GATEWAY, "gw")
    return GatewayConfig(
        listen="127.0.0.1:0",
        node_address=node_address,
        tls_cert_file=link.cert_file,
        tls_key_file=link.key_file,
        tls_ca_file=link.ca_file,
        **options,
    )


@contextlib.asynccontextmanager
async def gateway_before(
    node: work_grpc.WorkServiceServicer, pki: Pki, **options: Any
) -> AsyncIterator[str]:
    """Serves ``node`` as the node's WorkService and a gateway (``options``: GatewayConfig
    fields) in front of it; yields the gateway's URL, and stops both."""
    server = GrpcServer(
        "scripted-node",
        pki.issue(Role.NODE, "n1"),
        ClientAuth.REQUIRED,
        rules_for(WORK_SERVICE, WORK_METHODS, Rule.peer(Role.GATEWAY)),
    )
    server.add(work_grpc.add_WorkServiceServicer_to_server, node, WORK_SERVICE)
    address = await server.start("127.0.0.1:0")
    runner, client, url = await start(gateway_config(address, pki, **options))
    try:
        yield url
    finally:
        await runner.cleanup()
        await client.close()
        await server.stop(0)
