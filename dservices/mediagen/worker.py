"""Worker processes that run MRLs off the server's event loop.

Pillow work is CPU-bound and a Pillow call cannot be interrupted, so each MRL runs in a worker
process: one MRL never blocks another, the wall-time limit holds even inside a long Pillow
call (the worker is killed and replaced), and a worker's memory is capped with RLIMIT_AS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from cgn_common.logs import log_event
from cgn_common.process import die_with_parent
from dservices.mediagen.config import MediaGenConfig
from dservices.mediagen.errors import (
    LimitExceededError,
    MediaGenError,
    OverloadedError,
    internal_error,
)
from dservices.mediagen.job import Job, JobResult, run_job

_log = logging.getLogger(__name__)

#: Extra time past the wall-time limit before a worker is killed (the script's own deadline
#: check answers first in all but a long Pillow call).
KILL_GRACE_S = 1.0
_START_TIMEOUT_S = 30.0
_READY = "ready"


def worker_main(connection: Connection, config: MediaGenConfig) -> None:
    """A worker process: prepares once, then runs jobs from ``connection`` until EOF."""
    parent = multiprocessing.parent_process()
    die_with_parent(parent.pid if parent is not None and parent.pid else os.getppid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops workers itself
    if config.worker_memory_bytes > 0:
        limit = config.worker_memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.setrecursionlimit(20_000)
    from PIL import Image

    from dservices.mediagen.parser import _lark

    Image.MAX_IMAGE_PIXELS = config.max_image_pixels
    _lark()  # build the parser tables before the first job
    connection.send(_READY)
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        connection.send(run_job(job, config))


class _Worker:
    def __init__(self, process: BaseProcess, connection: Connection) -> None:
        self.process = process
        self.connection = connection

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.process.kill()


class WorkerPool:
    """``size`` worker processes and a bounded queue of MRLs waiting for one."""

    def __init__(self, config: MediaGenConfig, size: int | None = None) -> None:
        self.config = config
        self.size = size or config.worker_count
        self._context = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._waiting = 0
        self._threads = ThreadPoolExecutor(self.size * 2, thread_name_prefix="mediagen-recv")
        self.replaced = 0

    async def start(self) -> None:
        """Starts every worker and waits until each is ready."""
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)

    async def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main, args=(child, self.config), name="mediagen-worker", daemon=True
        )
        process.start()  # from the event loop's thread: PDEATHSIG follows this thread
        child.close()
        worker = _Worker(process, parent)
        self._all.add(worker)
        try:
            ready = await asyncio.wait_for(self._recv(worker), _START_TIMEOUT_S)
        except (TimeoutError, EOFError, OSError):
            ready = None
        if ready != _READY:
            await self._discard(worker)
            raise RuntimeError("a mediagen worker did not start")
        return worker

    async def _recv(self, worker: _Worker) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, worker.connection.recv)

    async def _discard(self, worker: _Worker) -> None:
        """Kills the worker, reaps it, then closes its pipe (its reader thread saw EOF)."""
        worker.kill()
        self._all.discard(worker)
        await asyncio.get_running_loop().run_in_executor(None, worker.process.join, 5.0)
        worker.connection.close()

    async def run(self, job: Job) -> JobResult:
        """Runs ``job`` on the next free worker; 503 when too many are waiting."""
        if self._waiting >= self.config.max_queue:
            raise OverloadedError("mediagen is busy: every worker is taken and the queue full")
        self._waiting += 1
        try:
            worker = await self._idle.get()
        finally:
            self._waiting -= 1
        healthy = False
        try:
            result, healthy = await self._run_on(worker, job)
            return result
        finally:
            if healthy:
                self._idle.put_nowait(worker)
            else:
                await self._discard(worker)
                self.replaced += 1
                self._idle.put_nowait(await self._spawn())

    async def _run_on(self, worker: _Worker, job: Job) -> tuple[JobResult, bool]:
        limit_s = self.config.wall_time_ms / 1000
        try:
            worker.connection.send(job)
            result = await asyncio.wait_for(self._recv(worker), limit_s + KILL_GRACE_S)
        except TimeoutError:
            worker.kill()  # a Pillow call past the deadline: stop it now
            log_event(_log, "mediagen_worker_killed", logging.WARNING, reason="wall_time")
            exc: MediaGenError = LimitExceededError(
                f"the MRL ran longer than {limit_s:g} s",
                limit="wall_time_ms",
                value=self.config.wall_time_ms,
                status=422,
            )
            return JobResult.error(exc), False
        except (EOFError, OSError):
            code = worker.process.exitcode
            log_event(_log, "mediagen_worker_died", logging.ERROR, exit_code=code)
            return JobResult.error(internal_error("the worker stopped unexpectedly")), False
        if not isinstance(result, JobResult):
            raise TypeError("a mediagen worker answered something that is not a JobResult")
        return result, True

    async def stop(self) -> None:
        """Stops every worker."""
        for worker in list(self._all):
            await self._discard(worker)
        self._threads.shutdown(wait=False, cancel_futures=True)
