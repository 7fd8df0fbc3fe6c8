"""Clean shutdown on SIGINT / SIGTERM."""

from __future__ import annotations

import asyncio
import signal


async def wait_for_stop() -> None:
    """Returns when the process receives SIGINT or SIGTERM.

    The handlers stay installed afterwards, so a second signal during the graceful shutdown
    that follows does not kill the process half way.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
