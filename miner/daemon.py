"""``cgn miner run``: start the DServices, connect to the node, reconnect with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path

import grpc

from cgn_common import loop as event_loop
from cgn_common.config import Secret
from cgn_common.errors import InvalidArgumentError
from cgn_common.logs import log_event
from cgn_common.ready import write_ready_file
from cgn_common.rpc import open_channel
from cgn_common.signals import wait_for_stop
from cgn_common.tasks import Backoff
from cgn_common.tls import TlsConfig, warn_if_plaintext
from miner._link import LinkSession
from miner.config import MinerConfig
from miner.fitness import run_fitness_test
from miner.runtime import ProcessRuntime, Runtime

_log = logging.getLogger(__name__)


class MinerDaemon:
    """A miner built from its config."""

    def __init__(self, config: MinerConfig, runtime: Runtime) -> None:
        if config.miner_key_file and not config.miner_key:
            key = Path(config.miner_key_file).read_text().strip()
            config = dataclasses.replace(config, miner_key=Secret(key))
        if not config.miner_id or not config.miner_key:
            raise InvalidArgumentError("miner_id and miner_key (or miner_key_file) are required")
        self.config = config
        self.runtime = runtime
        self.connected = asyncio.Event()
        self._tls = TlsConfig(
            ca_file=config.tls_ca_file, insecure_plaintext=config.insecure_plaintext
        )
        self._tls.check(need_cert=False)
        warn_if_plaintext(self._tls, "miner")

    @classmethod
    def from_config(cls, config: MinerConfig) -> MinerDaemon:
        """The production miner: the runtime the config names."""
        if config.runtime != "process":
            raise InvalidArgumentError(f"runtime {config.runtime!r} is not available yet")
        runtime = ProcessRuntime(
            config.dservices,
            [Path(p) for p in config.descriptors],
            state_dir=Path(config.state_dir) / "dservices",
        )
        return cls(config, runtime)

    async def run(self) -> None:
        """Connects and serves forever, reconnecting after failures."""
        fitness = await asyncio.to_thread(run_fitness_test)
        log_event(_log, "fitness_tested", cpu_kmips=fitness.cpu_kmips, threads=fitness.cpu_threads)
        backoff = Backoff(0.1, float(self.config.reconnect_max_s))
        while True:
            session = LinkSession(self.config, self.runtime, fitness)
            try:
                # Bodies go on a connection of their own: a large one must never hold up the
                # control stream's acks (SPEC: 500 ms) in the same TCP connection.
                async with (
                    open_channel(self.config.node_address, self._tls) as channel,
                    open_channel(
                        self.config.node_address, self._tls, own_connection=True
                    ) as data_channel,
                ):
                    await session.run(channel, self.connected, data_channel)
            except grpc.aio.AioRpcError as exc:
                log_event(
                    _log,
                    "miner_link_down",
                    logging.WARNING,
                    code=exc.code().name,
                    error=exc.details(),
                )
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    backoff.longest()  # retrying soon will not fix credentials
            if session.welcome is not None:
                backoff.reset()
            if session.drained:
                backoff.longest()  # the node asked us to leave: do not knock again at once
            await asyncio.sleep(backoff.next())


async def serve(config: MinerConfig, ready_file: Path | None = None) -> None:
    """Runs the miner until SIGINT or SIGTERM."""
    daemon = MinerDaemon.from_config(config)
    await daemon.runtime.start()
    link = asyncio.create_task(daemon.run())
    stop = asyncio.create_task(wait_for_stop())
    connected = asyncio.create_task(daemon.connected.wait())
    try:
        await asyncio.wait({connected, stop, link}, return_when=asyncio.FIRST_COMPLETED)
        if connected.done():
            write_ready_file(ready_file, {}, miner_id=config.miner_id, node=config.node_address)
            await asyncio.wait({stop, link}, return_when=asyncio.FIRST_COMPLETED)
        if link.done():
            link.result()
    finally:
        log_event(_log, "miner_stopping")
        for task in (link, stop, connected):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await daemon.runtime.stop()


def run(config: MinerConfig, ready_file: Path | None = None) -> None:
    """Blocking entry point for ``cgn miner run``."""
    event_loop.run(serve(config, ready_file))
