"""A DService for the tests of streamed request bodies: answers the SHA-256 and the size of the
request body, read as it arrives (``{"sha256": ..., "size": ...}``). ``X-Answer-Early: 1``
answers 413 at once, before reading any of the body. Serves on ``CGN_LISTEN``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

from aiohttp import web


async def _digest(request: web.Request) -> web.StreamResponse:
    if request.headers.get("X-Answer-Early") == "1":
        return web.json_response({"refused": True}, status=413)
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "size": size})


async def _serve(listen: str) -> None:
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", _digest)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, listen.removeprefix("unix:")).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(_serve(os.environ["CGN_LISTEN"]))
