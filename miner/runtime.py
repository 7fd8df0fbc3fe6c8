"""The ``process`` DService runtime: each DService is a child process serving HTTP/1.1 where
``CGN_LISTEN`` says (a loopback port or a Unix socket), started from its descriptor
(``dservice.toml``, :mod:`cgn_common.descriptor`), restarted when it crashes, metered per
request through /proc (``miner/metering.py``; what the figures mean: docs/metering.md). Its
stdout and stderr become the miner's log lines, tagged with the DService's name.

Requests are proxied byte for byte (docs/dservices.md, "Proxying"): the miner sets ``Host``
to the listener's address and adds ``X-Request-Id``, ``X-CGN-Attempt`` and, for a body sent
without one, ``Content-Length``; it drops hop-by-hop headers and those named in
``Connection``; it never follows a redirect, keeps no cookies and decodes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cgn_common.descriptor import (
    BUILTIN_DSERVICES,
    Listen,
    LoadedDescriptor,
    builtin_descriptor,
    load_descriptor,
)
from cgn_common.errors import (
    CgnError,
    DServiceFailedError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from cgn_common.http import end_to_end
from cgn_common.logs import log_event
from cgn_common.process import dies_with_this_process
from cgn_common.tasks import Supervisor
from cgn_common.types import Metering
from miner._http1 import (
    RawStream,
    RequestBody,
    ResponseTooLargeError,
    StreamedBody,
    Upstream,
    UpstreamProtocolError,
    body_size,
)
from miner.metering import ProcessMeter

_log = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_DSERVICES",
    "ENV_ALLOW_LIST",
    "DServiceProcess",
    "ProcessRuntime",
    "RequestBody",
    "StreamedBody",
]

#: The only variables of the miner's environment a DService process inherits. Everything
#: else (the miner's id and key, TLS paths, the operator's shell) stays with the miner.
ENV_ALLOW_LIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")

#: The largest DService answer passed on (2 GiB, SPEC 4); it streams through the miner a slice
#: at a time, and a larger one is the DService's failure.
MAX_RESPONSE_BYTES = 2 * 1024 * 1024 * 1024

#: Request headers the miner writes itself (``Host``: the listener's address) or that carry
#: the CGN's own credentials; a copy arriving with the work is dropped.
_MINER_SETS = frozenset({"host", "x-cgn-session"})

#: Longest DService output line logged whole; longer lines are cut (and say so).
_MAX_LOG_LINE = 4096


def dservice_environment(
    name: str, environ: Mapping[str, str], listen: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of DService ``name``: the allow-list, the variables the operator set
    for this DService (``CGN_DSERVICE_<NAME>_*``), the descriptor's ``env`` (``extra``) and
    ``CGN_LISTEN``."""
    own = "CGN_DSERVICE_" + "".join(c if c.isalnum() else "_" for c in name.upper()) + "_"
    env = {k: v for k, v in environ.items() if k in ENV_ALLOW_LIST or k.startswith(own)}
    env.update(extra or {})
    env["CGN_LISTEN"] = listen
    return env


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


@dataclass
class DServiceAnswer:
    """A DService's answer as it arrives: the head, then ``body`` to read; the metering
    figures are set when the call's context ends (:meth:`DServiceProcess.stream`)."""

    status: int
    headers: list[tuple[str, bytes]]
    body: AsyncIterator[bytes]
    cpu_time_us: int = 0
    wall_time_us: int = 0
    peak_memory_bytes: int = 0
    cpu_metering: Metering = Metering.NOT_MEASURED
    peak_memory_metering: Metering = Metering.NOT_MEASURED


@dataclass
class Spent:
    """What one call to a DService used, filled in when the call ends however it ends: a call
    the node cancels is billed for its share up to the cancel (SPEC 15), which the miner
    reports from here (a figure that is not measured is zero)."""

    bytes_in: int = 0
    cpu_time_us: int = 0
    wall_time_us: int = 0
    cpu_metering: Metering = Metering.NOT_MEASURED
    #: Whether the call to the DService got as far as ending (a unit cancelled before it
    #: reached the DService used nothing).
    ended: bool = False


def _cgn_error(name: str, exc: BaseException) -> BaseException:
    """A failure of the DService or of its connection as the CGN's error (``exc`` itself when
    it is not one of those)."""
    if isinstance(exc, CgnError):
        return exc  # already the CGN's (e.g. a streamed body's source failed)
    if isinstance(exc, UpstreamProtocolError):
        if exc.local:
            return InvalidArgumentError(f"not a valid HTTP/1.1 request: {exc}")
        return DServiceFailedError(f"DService {name!r} failed: {exc}")
    if isinstance(exc, ResponseTooLargeError):
        return DServiceFailedError(f"DService {name!r}: {exc}")
    if isinstance(exc, OSError):
        error = UnavailableError(f"DService {name!r} failed: {exc}")
        error.__cause__ = exc
        return error
    return exc


_FAILURES = (UpstreamProtocolError, ResponseTooLargeError, OSError)


class _Body:
    """An answer's body as it arrives, its failures as the CGN's errors."""

    __slots__ = ("_chunks", "_name")

    def __init__(self, name: str, chunks: AsyncIterator[bytes]) -> None:
        self._name = name
        self._chunks = chunks

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except _FAILURES as exc:
            raise _cgn_error(self._name, exc) from None


class _MeteredCall:
    """One call to a DService as :meth:`DServiceProcess.stream` makes it: metered from just
    before the request is sent until the context ends, however it ends."""

    __slots__ = (
        "_answer",
        "_body",
        "_headers",
        "_meter",
        "_method",
        "_name",
        "_raw",
        "_spent",
        "_started",
        "_target",
        "_ticket",
        "_upstream",
    )

    def __init__(
        self,
        name: str,
        meter: ProcessMeter,
        upstream: Upstream,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: RequestBody,
        spent: Spent | None,
    ) -> None:
        self._name = name
        self._meter = meter
        self._upstream = upstream
        self._method = method
        self._target = target
        self._headers = headers
        self._body = body
        self._spent = spent
        self._answer: DServiceAnswer | None = None
        self._raw: RawStream | None = None

    async def __aenter__(self) -> DServiceAnswer:
        self._ticket = self._meter.begin()
        self._started = time.perf_counter_ns()
        try:
            self._raw = raw = await self._upstream.open(
                self._method, self._target, self._headers, self._body, MAX_RESPONSE_BYTES
            )
        except BaseException as exc:
            self._end()
            if isinstance(exc, _FAILURES):
                raise _cgn_error(self._name, exc) from None
            raise
        try:
            headers = response_headers(raw.headers)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self._answer = DServiceAnswer(raw.status, headers, _Body(self._name, raw.body))
        return self._answer

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._raw is not None:
                await self._raw.aclose()
        finally:
            self._end()

    def _end(self) -> None:
        """Takes the call's share however it ended: a failed or cancelled call's must not go
        to the others, and abandoned work is billed for it (SPEC 15)."""
        metered = self._meter.end(self._ticket)
        wall_us = (time.perf_counter_ns() - self._started) // 1000
        answer = self._answer
        if answer is not None:
            answer.cpu_time_us = metered.cpu_time_us
            answer.wall_time_us = wall_us
            answer.peak_memory_bytes = metered.peak_memory_bytes
            answer.cpu_metering = metered.cpu_metering
            answer.peak_memory_metering = metered.peak_memory_metering
        spent = self._spent
        if spent is not None:
            spent.cpu_time_us = metered.cpu_time_us
            spent.wall_time_us = wall_us
            spent.cpu_metering = metered.cpu_metering
            spent.ended = True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def request_headers(
    headers: Sequence[tuple[str, bytes]], authority: str, body_length: int
) -> list[tuple[bytes, bytes]]:
    """The headers the DService receives: ``Host`` (the listener's address) first, then the
    end-to-end headers as given, and ``Content-Length`` only when a body came without one."""
    kept = end_to_end(headers, _MINER_SETS)
    out = [(b"Host", authority.encode("ascii"))]
    out += [(n.encode("latin-1"), v) for n, v in kept]
    if body_length and not any(n.lower() == "content-length" for n, _ in kept):
        out.append((b"Content-Length", str(body_length).encode()))
    return out


def response_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, bytes]]:
    """The DService's answer headers as sent, minus hop-by-hop ones and those its
    ``Connection`` names (``Content-Length`` stays: it is the DService's framing)."""
    return end_to_end([(n.decode("latin-1"), v) for n, v in raw])


class _OutputLog:
    """Logs what a DService writes to one of its streams, a line at a time."""

    def __init__(self, name: str, stream: str, pid: int) -> None:
        self._name, self._stream, self._pid = name, stream, pid
        self._partial = b""

    def _emit(self, line: bytes) -> None:
        cut = len(line) > _MAX_LOG_LINE
        text = line[:_MAX_LOG_LINE].decode("utf-8", "replace").rstrip("\r")
        log_event(
            _log,
            "dservice_output",
            dservice=self._name,
            stream=self._stream,
            pid=self._pid,
            line=text,
            truncated=cut,
        )

    async def pump(self, reader: asyncio.StreamReader) -> None:
        """Reads until the stream ends (the process exited)."""
        while data := await reader.read(64 * 1024):
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            if len(self._partial) > _MAX_LOG_LINE:
                lines.append(self._partial)
                self._partial = b""
            for line in lines:
                self._emit(line)
        if self._partial:
            self._emit(self._partial)


class DServiceProcess:
    """One running DService child process."""

    def __init__(self, loaded: LoadedDescriptor, state_dir: Path | None = None) -> None:
        self.name = loaded.name
        self.version = loaded.descriptor.version
        self.max_body_bytes = loaded.max_body_bytes
        self.descriptor = loaded
        self._state_dir = state_dir
        self._process: asyncio.subprocess.Process | None = None
        #: Meters the requests to the current child, made once per spawn (its /proc files stay
        #: open: the hot path reads them, never opens them).
        self._meter: ProcessMeter | None = None
        self._listen = Listen()
        self._upstream: Upstream | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._output = Supervisor(f"dservice-{self.name}-output")
        self._socket_dir: str | None = None
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

    @property
    def listen(self) -> Listen:
        """Where the current child listens."""
        return self._listen

    async def start(self) -> None:
        """Starts the child and waits until it accepts connections."""
        await self._spawn()
        self._monitor = asyncio.create_task(self._watch(), name=f"dservice-{self.name}")

    def _next_listen(self) -> Listen:
        if self.descriptor.process.listen == "tcp":
            return Listen(port=_free_port())
        if self._socket_dir is None:
            base = self._state_dir
            # A socket path longer than sun_path (108 bytes) cannot be bound: use /tmp then.
            if base is None or len(str(base.resolve())) + len(self.name) > 70:
                base = None
            else:
                base.mkdir(parents=True, exist_ok=True)
            self._socket_dir = tempfile.mkdtemp(prefix=f"dsvc-{self.name}-", dir=base)
        path = os.path.join(self._socket_dir, "http.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the previous child's
        return Listen(socket=path)

    async def _spawn(self) -> None:
        self._listen = listen = self._next_listen()
        loaded = self.descriptor
        env = dservice_environment(self.name, os.environ, listen.value, loaded.process.env)
        try:
            self._process = await asyncio.create_subprocess_exec(
                *loaded.argv(listen),
                env=env,
                cwd=loaded.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=dies_with_this_process(),
            )
        except OSError as exc:
            raise FailedPreconditionError(f"DService {self.name!r} cannot start: {exc}") from None
        process = self._process
        for stream, reader in (("stdout", process.stdout), ("stderr", process.stderr)):
            assert reader is not None
            pump = _OutputLog(self.name, stream, process.pid).pump(reader)
            self._output.spawn(f"dservice-{self.name}-{stream}", pump)
        if self._upstream is not None:
            self._upstream.close()  # the previous child's connections
        self._upstream = Upstream(listen)
        if self._meter is not None:
            self._meter.close()  # the previous child's; requests still in flight finish first
        unmetered: OSError | None = None
        try:
            self._meter = ProcessMeter(process.pid)
        except OSError as exc:
            self._meter, unmetered = None, exc  # exited already, or no /proc
        deadline = time.monotonic() + loaded.process.start_timeout_s
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise FailedPreconditionError(
                    f"DService {self.name!r} exited at start with {process.returncode} "
                    "(its output is in the miner's log as dservice_output)"
                )
            if unmetered is not None:  # never serve work that cannot be metered
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                raise FailedPreconditionError(
                    f"DService {self.name!r} cannot be metered: {unmetered}"
                )
            try:
                if listen.socket:
                    _, writer = await asyncio.open_unix_connection(listen.socket)
                else:
                    _, writer = await asyncio.open_connection(listen.host, listen.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            self._ready.set()
            log_event(
                _log,
                "dservice_started",
                dservice=self.name,
                version=self.version,
                pid=process.pid,
                listen=listen.value,
            )
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise FailedPreconditionError(
            f"DService {self.name!r} did not accept connections on {listen.value} within "
            f"{loaded.process.start_timeout_s} s"
        )

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
        self,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, bytes]],
        body: RequestBody,
        spent: Spent | None = None,
    ) -> DServiceResponse:
        """Sends one request to the DService and reads the whole answer (:meth:`stream`)."""
        async with self.stream(method, path, query, headers, body, spent) as answer:
            content = b"".join([chunk async for chunk in answer.body])
        return DServiceResponse(
            status=answer.status,
            headers=answer.headers,
            body=content,
            cpu_time_us=answer.cpu_time_us,
            wall_time_us=answer.wall_time_us,
            peak_memory_bytes=answer.peak_memory_bytes,
            cpu_metering=answer.cpu_metering,
            peak_memory_metering=answer.peak_memory_metering,
        )

    def stream(
        self,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, bytes]],
        body: RequestBody,
        spent: Spent | None = None,
    ) -> contextlib.AbstractAsyncContextManager[DServiceAnswer]:
        """Sends one request to the DService, unchanged but for the headers the miner owns
        (:func:`request_headers`); yields its answer's head with the body to read as it
        arrives (at most MAX_RESPONSE_BYTES). A :class:`StreamedBody` goes to the DService a
        slice at a time as it arrives, while the answer is read (a failure of its source
        fails the call). The call is metered until the context ends: the answer's figures,
        and ``spent``, are set then, even when the call fails or is cancelled."""
        meter = self._meter
        upstream = self._upstream
        if not self._ready.is_set() or meter is None or upstream is None:
            raise UnavailableError(f"DService {self.name!r} is not running")
        target = path + ("?" + query if query else "")
        return _MeteredCall(
            self.name,
            meter,
            upstream,
            method.encode("ascii", "replace"),
            target.encode("utf-8", "surrogateescape"),
            request_headers(headers, self._listen.authority, body_size(body)),
            body,
            spent,
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
        await self._output.close()
        if self._upstream is not None:
            self._upstream.close()
        if self._meter is not None:
            self._meter.close()
        if self._socket_dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._socket_dir, "http.sock"))
                os.rmdir(self._socket_dir)


class DService(Protocol):
    """One DService a runtime runs, as the miner's link uses it."""

    name: str
    version: str
    #: The largest request body it takes (its descriptor's ``[limits]``); 0: no limit.
    max_body_bytes: int

    @property
    def running(self) -> bool:
        """True while it can take requests."""

    async def call(
        self,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, bytes]],
        body: RequestBody,
        spent: Spent | None = None,
    ) -> DServiceResponse:
        """Sends one request to the DService and meters it (into ``spent`` too, however the
        call ends)."""

    def stream(
        self,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, bytes]],
        body: RequestBody,
        spent: Spent | None = None,
    ) -> contextlib.AbstractAsyncContextManager[DServiceAnswer]:
        """The same call, its answer's body read as it arrives."""


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
    """Runs DServices as child processes: built-in ones by name, others from their
    descriptor files."""

    def __init__(
        self,
        names: Sequence[str] = (),
        descriptors: Sequence[LoadedDescriptor | Path] = (),
        state_dir: Path | None = None,
    ) -> None:
        loaded = [builtin_descriptor(n) for n in names]
        for item in descriptors:
            loaded.append(item if isinstance(item, LoadedDescriptor) else load_descriptor(item))
        seen: set[str] = set()
        for item in loaded:
            if item.name in seen:
                raise FailedPreconditionError(f"DService {item.name!r} is configured twice")
            seen.add(item.name)
        self.dservices = {d.name: DServiceProcess(d, state_dir) for d in loaded}

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
