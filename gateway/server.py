"""Runs the gateway's HTTP server."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from aiohttp import web

from cgn_common import loop as event_loop
from cgn_common.logs import log_event
from cgn_common.ready import write_ready_file
from cgn_common.signals import wait_for_stop
from cgn_common.tls import TlsConfig, warn_if_plaintext
from gateway._http import GatewayRunner
from gateway._rpc import NodeClient
from gateway.app import make_app
from gateway.config import GatewayConfig

_log = logging.getLogger(__name__)


async def start(config: GatewayConfig) -> tuple[web.AppRunner, NodeClient, str]:
    """Starts serving; returns the runner, the node client and the bound URL."""
    tls = TlsConfig(
        config.tls_cert_file, config.tls_key_file, config.tls_ca_file, config.insecure_plaintext
    )
    tls.check(need_cert=True)
    warn_if_plaintext(tls, "gateway")
    node = NodeClient(config.node_address, tls)
    ssl_context = None
    if config.https_cert_file or config.https_key_file:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(config.https_cert_file, config.https_key_file)
    runner = GatewayRunner(make_app(config, node), config)
    await runner.setup()
    host, _, port = config.listen.rpartition(":")
    # A deep accept queue: a burst of connections (or an attacker's) is accepted at once and
    # then meets the idle timeout, rather than waiting unaccepted in the kernel's SYN retries.
    site = web.TCPSite(runner, host, int(port), ssl_context=ssl_context, backlog=1024)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound_port = sockets[0].getsockname()[1] if sockets else int(port)
    scheme = "https" if ssl_context else "http"
    return runner, node, f"{scheme}://{host}:{bound_port}"


async def serve(config: GatewayConfig, ready_file: Path | None = None) -> None:
    """Serves until SIGINT or SIGTERM."""
    runner, node, url = await start(config)
    write_ready_file(ready_file, {"http": url})
    log_event(_log, "gateway_ready", url=url, node=config.node_address)
    try:
        await wait_for_stop()
    finally:
        log_event(_log, "gateway_stopping")
        await runner.cleanup()
        await node.close()


def run(config: GatewayConfig, ready_file: Path | None = None) -> None:
    """Blocking entry point for ``cgn gateway``, on the services' event loop (uvloop unless
    ``CGN_EVENT_LOOP=asyncio``, cgn_common/loop.py)."""
    event_loop.run(serve(config, ready_file))
