"""Supervised background tasks: every task has an owner that logs its failure with the real
traceback and either restarts it with backoff or fails the process loudly.

A process builds one :class:`Supervisor`, starts its loops with :meth:`Supervisor.loop` and
its one-shot tasks with :meth:`Supervisor.spawn`, and awaits :meth:`Supervisor.close` at
shutdown. ``serve()`` functions also wait on :attr:`Supervisor.fatal`, so a loop declared
fatal ends the process with its error instead of leaving it half alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from cgn_common.logs import log_event

_log = logging.getLogger(__name__)

#: A run that lasted this long resets the backoff: it was healthy, not crash-looping.
_HEALTHY_RUN_S = 10.0


class Backoff:
    """Exponential reconnect delays: ``start_s``, doubling up to ``max_s``; ``reset()`` after
    a success."""

    def __init__(self, start_s: float = 0.1, max_s: float = 5.0) -> None:
        self._start_s = start_s
        self._max_s = max_s
        self._next_s = start_s

    def next(self) -> float:
        """The delay to wait now; the one after it doubles."""
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        return delay

    def reset(self) -> None:
        """Back to the shortest delay."""
        self._next_s = self._start_s

    def longest(self) -> None:
        """Wait the longest delay next (e.g. after a refusal that retrying soon won't fix)."""
        self._next_s = self._max_s


class Supervisor:
    """Owns background tasks; nothing it starts fails silently."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._fatal: asyncio.Future[BaseException] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.restarts: dict[str, int] = {}

    @property
    def fatal(self) -> asyncio.Future[BaseException]:
        """Resolves with the error of a loop declared fatal."""
        if self._fatal is None:
            self._fatal = asyncio.get_running_loop().create_future()
        return self._fatal

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Runs a one-shot task; its exception, if any, is logged with its traceback."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log_event(
                _log, "task_failed", logging.ERROR, exc=exc, owner=self.name, task=task.get_name()
            )

    def loop(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        *,
        backoff_start_s: float = 0.1,
        backoff_max_s: float = 5.0,
        fatal: bool = False,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> asyncio.Task[None]:
        """Runs ``body()`` again whenever it returns or raises, with exponential backoff.

        An exception is logged with its traceback; with ``fatal`` it instead sets
        :attr:`fatal` and the loop stops, so the process can exit with the error.
        """
        return self.spawn(
            name, self._run_loop(name, body, backoff_start_s, backoff_max_s, fatal, sleep)
        )

    async def _run_loop(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        start_s: float,
        max_s: float,
        fatal: bool,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        backoff = Backoff(start_s, max_s)
        while True:
            began = time.monotonic()
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_event(
                    _log,
                    "loop_failed",
                    logging.ERROR,
                    exc=exc,
                    owner=self.name,
                    loop=name,
                    restart_in_s=None if fatal else "backoff",
                )
                if fatal:
                    if not self.fatal.done():
                        self.fatal.set_result(exc)
                    return
            if time.monotonic() - began >= _HEALTHY_RUN_S:
                backoff.reset()
            self.restarts[name] = self.restarts.get(name, 0) + 1
            await sleep(backoff.next())

    async def close(self) -> None:
        """Cancels every task and waits for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
