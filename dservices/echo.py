"""The built-in ``echo`` DService: returns the request body unchanged and reports the
method, path and query in ``X-Echo-Method``, ``X-Echo-Path`` and ``X-Echo-Query``, and the
names of the request headers it received in ``X-Echo-Header-Names``.

Run: ``CGN_LISTEN=127.0.0.1:8000 python -m dservices.echo`` (or ``CGN_LISTEN=unix:/tmp/e.sock``).
"""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import web

_CHUNK = 64 * 1024


async def _echo(request: web.Request) -> web.StreamResponse:
    headers = {
        "X-Echo-Method": request.method,
        "X-Echo-Path": request.raw_path.split("?", 1)[0],
        "X-Echo-Query": request.rel_url.raw_query_string,
        # The names of the headers that reached the DService, to check what the CGN strips.
        "X-Echo-Header-Names": ",".join(sorted({n.lower() for n in request.headers})),
    }
    content_type = request.headers.get("Content-Type")
    if content_type:
        headers["Content-Type"] = content_type
    if request.content_length is not None and request.content_length <= _CHUNK:
        return web.Response(body=await request.read(), headers=headers)
    response = web.StreamResponse(headers=headers)
    if request.content_length is not None:
        response.content_length = request.content_length
    await response.prepare(request)
    async for chunk in request.content.iter_chunked(_CHUNK):
        await response.write(chunk)
    await response.write_eof()
    return response


def make_app() -> web.Application:
    """The echo application (any method, any path)."""
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


async def serve(listen: str) -> None:
    """Serves on ``listen`` until SIGTERM or SIGINT."""
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site: web.BaseSite
    if listen.startswith("unix:"):
        site = web.UnixSite(runner, listen[len("unix:") :])
    else:
        host, _, port = listen.rpartition(":")
        site = web.TCPSite(runner, host or "127.0.0.1", int(port))
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    """Entry point: reads ``CGN_LISTEN``."""
    asyncio.run(serve(os.environ.get("CGN_LISTEN", "127.0.0.1:8000")))


if __name__ == "__main__":
    main()
