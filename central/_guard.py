"""Database calls that run to their end even when their caller is cancelled."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine


class _HasEngine(Protocol):
    _engine: AsyncEngine


_S = TypeVar("_S", bound=_HasEngine)
_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Database calls still running, per engine (see :func:`uncancellable`).
_running: weakref.WeakKeyDictionary[AsyncEngine, set[asyncio.Task[Any]]] = (
    weakref.WeakKeyDictionary()
)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # its caller may be gone: the error is its caller's, not the loop's


def uncancellable(
    method: Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]]:
    """Runs a store method to its end even when its caller is cancelled (a question the
    node withdrew, a link that closed): an aiosqlite call cut mid-way leaves its worker
    thread answering a loop that may be gone. :func:`dispose` waits for these calls."""

    async def guarded(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        task = asyncio.ensure_future(method(self, *args, **kwargs))
        running = _running.setdefault(self._engine, set())
        running.add(task)
        task.add_done_callback(running.discard)
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    functools.update_wrapper(guarded, method)
    return guarded


async def dispose(engine: AsyncEngine, timeout_s: float = 10.0) -> None:
    """Waits (bounded) for the engine's database calls still running, then closes it."""
    running = _running.get(engine)
    if running:
        await asyncio.wait(set(running), timeout=timeout_s)
    await engine.dispose()
