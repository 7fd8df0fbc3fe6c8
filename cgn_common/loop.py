"""The event loop the CGN's services run on: uvloop (libuv, in C) by default, asyncio's own
loop with ``CGN_EVENT_LOOP=asyncio``. Every callback gRPC's asyncio layer schedules, every
timer and every socket event goes through the loop, so its cost is paid several times per
request (docs/performance.md measures the difference)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

#: The environment variable that picks the loop: "uvloop" (the default) or "asyncio".
LOOP_ENV = "CGN_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory the environment asks for (None: asyncio's default loop)."""
    choice = os.environ.get(LOOP_ENV, "uvloop")
    if choice not in ("uvloop", "asyncio"):
        raise ValueError(f"{LOOP_ENV} must be 'uvloop' or 'asyncio', not {choice!r}")
    return uvloop.new_event_loop if choice == "uvloop" else None


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs ``main`` to completion on the chosen loop, as ``asyncio.run`` does."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
