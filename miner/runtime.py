"""The ``process`` DService runtime: each DService is a child process serving HTTP on a
loopback port (``CGN_LISTEN``), restarted when it crashes, metered per request through /proc
(``miner/metering.py``; what the figures mean: docs/metering.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from cgn_common.errors import FailedPreconditionError, UnavailableError
from cgn_common.http import HOP_BY_HOP
from cgn_common.logs import log_event
from cgn_common.process import die_with_parent
from cgn_common.types import Metering
from miner.metering import ProcessMeter

_log = logging.getLogger(__name__)

#: Built-in DServices the process runtime can start, by name.
BUILTIN_DSERVICES: dict[str, list[str]] = {
    "echo": [sys.executable, "-m", "dservices.echo"],
    "mediagen": [sys.executable, "-m", "dservices.mediagen"],
}


#: The only variables of the miner's environment a DService process inherits. Everything
#: else (the miner's id and key, TLS paths, the operator's shell) stays with the miner.
ENV_ALLOW_LIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


def dservice_environment(name: str, environ: dict[str, str], listen: str) -> dict[str, str]:
    """The environment of DService ``name``: the allow-list, the variables the operator set
    for this DService (``CGN_DSERVICE_<NAME>_*``), and ``CGN_LISTEN``."""
    own = "CGN_DSERVICE_" + "".join(c if c.isalnum() else "_" for c in name.upper()) + "_"
    env = {k: v for k, v in environ.items() if k in ENV_ALLOW_LIST or k.startswith(own)}
    env["CGN_LISTEN"] = listen
    return env


_START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class DServiceResponse:
    """A DService's answer and what it cost (a figure that is not measured is zero)."""

    status: int
    headers: list[tuple[str, bytes]]
    body: bytes
    cpu_time_us: int
    wall_time_us: int
    peak_memory_bytes: int
    cpu_metering: Metering
    peak_memory_metering: Metering


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DServiceProcess:
    """One running DService child process."""

    def __init__(self, name: str, command: Sequence[str]) -> None:
        self.name = name
        self._command = list(command)
        self._process: asyncio.subprocess.Process | None = None
        #: Meters the requests to the current child, made once per spawn (its /proc files stay
        #: open: the hot path reads them, never opens them).
        self._meter: ProcessMeter | None = None
        self._port = 0
        self._session: aiohttp.ClientSession | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = asyncio.Event()
        self.restarts = 0

    @property
    def running(self) -> bool:
        """True while the child serves."""
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        """The current child's process id."""
        return None if self._process is None else self._process.pid

    @property
    def meter(self) -> ProcessMeter | None:
        """The meter of the current child."""
        return self._meter

    async def start(self) -> None:
        """Starts the child and waits until it accepts connections."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, force_close=False),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        await self._spawn()
        self._monitor = asyncio.create_task(self._watch(), name=f"dservice-{self.name}")

    async def _spawn(self) -> None:
        self._port = _free_port()
        env = dservice_environment(self.name, dict(os.environ), f"127.0.0.1:{self._port}")
        self._process = await asyncio.create_subprocess_exec(
            *self._command, env=env, preexec_fn=die_with_parent
        )
        if self._meter is not None:
            self._meter.close()  # the previous child's; requests still in flight finish first
        unmetered: OSError | None = None
        try:
            self._meter = ProcessMeter(self._process.pid)
        except OSError as exc:
            self._meter, unmetered = None, exc  # exited already, or no /proc
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise FailedPreconditionError(f"DService {self.name!r} exited at start")
            if unmetered is not None:  # never serve work that cannot be metered
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                raise FailedPreconditionError(
                    f"DService {self.name!r} cannot be metered: {unmetered}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self._port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            self._ready.set()
            log_event(
                _log, "dservice_started", dservice=self.name, pid=self._process.pid, port=self._port
            )
            return
        raise FailedPreconditionError(f"DService {self.name!r} did not start listening in time")

    async def _watch(self) -> None:
        delay = 0.1
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            self._ready.clear()
            if self._stopping:
                return
            log_event(
                _log,
                "dservice_crashed",
                logging.WARNING,
                dservice=self.name,
                exit_code=code,
                restart_in_s=delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                await self._spawn()
                self.restarts += 1
            except FailedPreconditionError as exc:
                log_event(_log, "dservice_restart_failed", logging.ERROR, error=exc.message)
            except Exception as exc:  # keep watching: a DService must not stay down silently
                log_event(
                    _log, "dservice_restart_failed", logging.ERROR, exc=exc, dservice=self.name
                )

    async def call(
        self, method: str, path: str, query: str, headers: Sequence[tuple[str, bytes]], body: bytes
    ) -> DServiceResponse:
        """Sends one request to the DService and meters it."""
        meter = self._meter
        if not self._ready.is_set() or meter is None or self._session is None:
            raise UnavailableError(f"DService {self.name!r} is not running")
        target = f"http://127.0.0.1:{self._port}{path}" + (f"?{query}" if query else "")
        send_headers = [
            (name, value.decode("latin-1"))
            for name, value in headers
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"
        ]
        ticket = meter.begin()
        started = time.perf_counter_ns()
        try:
            async with self._session.request(
                method, URL(target, encoded=True), headers=send_headers, data=body
            ) as response:
                payload = await response.read()
                raw_headers = response.raw_headers
                status = response.status
        except aiohttp.ClientError as exc:
            raise UnavailableError(f"DService {self.name!r} failed: {exc}") from exc
        finally:
            # Also when the call fails or is cancelled: its share must not go to the others.
            # (Billing abandoned work for its share is the ledger's part, SPEC section 15.)
            metered = meter.end(ticket)
        wall_us = (time.perf_counter_ns() - started) // 1000
        kept = [
            (name.decode("latin-1"), value)
            for name, value in raw_headers
            if name.decode("latin-1").lower() not in HOP_BY_HOP
            and name.lower() != b"content-length"
        ]
        return DServiceResponse(
            status=status,
            headers=kept,
            body=payload,
            cpu_time_us=metered.cpu_time_us,
            wall_time_us=wall_us,
            peak_memory_bytes=metered.peak_memory_bytes,
            cpu_metering=metered.cpu_metering,
            peak_memory_metering=metered.peak_memory_metering,
        )

    async def stop(self) -> None:
        """Stops the child (SIGTERM, then SIGKILL after 5 s)."""
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5.0)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._session is not None:
            await self._session.close()
        if self._meter is not None:
            self._meter.close()


class DService(Protocol):
    """One DService a runtime runs, as the miner's link uses it."""

    name: str

    @property
    def running(self) -> bool:
        """True while it can take requests."""

    async def call(
        self, method: str, path: str, query: str, headers: Sequence[tuple[str, bytes]], body: bytes
    ) -> DServiceResponse:
        """Sends one request to the DService and meters it."""


class Runtime(Protocol):
    """A DService runtime (``process`` now; ``docker`` for isolation later)."""

    @property
    def dservices(self) -> Mapping[str, DService]:
        """The DServices it runs, by name."""

    async def start(self) -> None:
        """Starts every DService."""

    async def stop(self) -> None:
        """Stops every DService."""

    def get(self, name: str) -> DService:
        """The DService ``name``; FailedPreconditionError when it is not installed."""


class ProcessRuntime:
    """Runs the configured DServices as child processes."""

    def __init__(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in BUILTIN_DSERVICES]
        if unknown:
            raise FailedPreconditionError(f"unknown built-in DServices: {unknown}")
        self.dservices = {n: DServiceProcess(n, BUILTIN_DSERVICES[n]) for n in names}

    async def start(self) -> None:
        """Starts every DService."""
        for dservice in self.dservices.values():
            await dservice.start()

    async def stop(self) -> None:
        """Stops every DService."""
        for dservice in self.dservices.values():
            await dservice.stop()

    def get(self, name: str) -> DServiceProcess:
        """The running DService ``name``."""
        try:
            return self.dservices[name]
        except KeyError:
            raise FailedPreconditionError(f"DService {name!r} is not installed") from None
