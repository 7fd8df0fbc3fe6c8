"""The built-in ``echo`` DService: returns the request body unchanged and reports the
method, path and query in ``X-Echo-Method``, ``X-Echo-Path`` and ``X-Echo-Query``, and the
names of the request headers it received in ``X-Echo-Header-Names``.

Run: ``CGN_LISTEN=127.0.0.1:8000 python -m dservices.echo`` (or ``CGN_LISTEN=unix:/tmp/e.sock``).

For tests and demos of the work path under faults, request headers ask for misbehaviour:

- ``X-Echo-Hold-Ms: N`` holds the request N ms before answering (a slow or hanging DService);
  a caller that disconnects meanwhile is noticed within 10 ms.
- ``X-Echo-Burn-Cpu-Ms: N`` burns N ms of CPU time (this thread's, not wall time) after the
  hold and before answering. It burns on the event loop, as a CPU-bound asyncio service does:
  requests still overlap, but a burn holds up the others (tests of metering use it).
- ``X-Echo-Poison: huge-header`` answers with a 16 KiB header, which the miner's HTTP client
  refuses to parse (a DService answering badly).
- ``X-Echo-Generate-Bytes: N`` answers N bytes (a repeating pattern), chunked, instead of
  the body (a large download from a small request); with ``X-Echo-Generate-Sized: 1`` it
  sends ``Content-Length: N`` instead of chunking.
- ``X-Echo-Digest: sha256`` reads the whole body first, then answers
  ``{"sha256": "<hex>", "size": N}`` (a DService that answers only after reading all of
  an upload).
- ``X-Echo-Drip: COUNTxMS`` answers ``COUNT`` lines (``line 1\n`` ...), chunked, one every
  ``MS`` ms, instead of the body (a DService that streams, e.g. server-sent events).

With ``CGN_DSERVICE_ECHO_JOURNAL=DIR`` every request is journaled as JSON lines in
``DIR/<pid>.jsonl``: ``{"event": "start"|"done"|"aborted", "request_id", "attempt", "miner_pid"}``
(from ``X-Request-Id`` and ``X-CGN-Attempt``), so a test can count executions per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time

from aiohttp import web

_CHUNK = 64 * 1024
_JOURNAL = os.environ.get("CGN_DSERVICE_ECHO_JOURNAL", "")


def _journal(request: web.Request, event: str) -> None:
    if not _JOURNAL:
        return
    entry = {
        "event": event,
        "request_id": request.headers.get("X-Request-Id", ""),
        "attempt": request.headers.get("X-CGN-Attempt", ""),
        "miner_pid": os.getppid(),
    }
    # One short O_APPEND write per line: lines from concurrent requests never interleave.
    with open(os.path.join(_JOURNAL, f"{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


async def _hold(request: web.Request, ms: int) -> bool:
    """Waits ``ms``; False as soon as the caller has gone away."""
    deadline = time.monotonic() + ms / 1000
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        await asyncio.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    return True


def _burn_cpu(ms: int) -> None:
    """Uses ``ms`` of this thread's CPU time (``time.thread_time``: on the event loop's thread
    that is the process's CPU for the request, whatever other threads do). The clock is read
    between sums of a few thousand numbers, so the time goes to user code rather than to the
    clock's system calls."""
    deadline = time.thread_time() + ms / 1000
    while time.thread_time() < deadline:
        sum(range(2000))


async def _echo(request: web.Request) -> web.StreamResponse:
    _journal(request, "start")
    hold = request.headers.get("X-Echo-Hold-Ms", "")
    if hold.isdigit() and not await _hold(request, int(hold)):
        _journal(request, "aborted")
        raise web.HTTPServiceUnavailable()  # nobody is listening any more
    burn = request.headers.get("X-Echo-Burn-Cpu-Ms", "")
    if burn.isdigit():
        _burn_cpu(int(burn))
    response: web.StreamResponse
    if request.headers.get("X-Echo-Digest") == "sha256":
        response = await _digest(request)
        _journal(request, "done")
        return response
    generate = request.headers.get("X-Echo-Generate-Bytes", "")
    if generate.isdigit():
        response = await _generate(request, int(generate))
        _journal(request, "done")
        return response
    drip = request.headers.get("X-Echo-Drip", "")
    count, _, every = drip.partition("x")
    if count.isdigit() and every.isdigit():
        response = await _drip(request, int(count), int(every))
    else:
        response = await _answer(request)
    _journal(request, "done")
    return response


#: What X-Echo-Generate-Bytes repeats: 256 KiB of every byte value in turn.
_PATTERN = bytes(range(256)) * 1024


async def _digest(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "size": size})


async def _generate(request: web.Request, size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.headers.get("X-Echo-Generate-Sized") == "1":
        response.content_length = size
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    left = size
    while left:
        piece = _PATTERN[: min(left, len(_PATTERN))]
        await response.write(piece)
        left -= len(piece)
    await response.write_eof()
    return response


async def _drip(request: web.Request, count: int, every_ms: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for n in range(1, count + 1):
        if n > 1:
            await asyncio.sleep(every_ms / 1000)
        await response.write(f"line {n}\n".encode())
    await response.write_eof()
    return response


async def _answer(request: web.Request) -> web.StreamResponse:
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
    if request.headers.get("X-Echo-Poison") == "huge-header":
        headers["X-Echo-Poison"] = "p" * 16 * 1024
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
