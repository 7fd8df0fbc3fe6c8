"""MediaGen's HTTP server: ``GET|POST /mgen/io`` runs an MRL on a worker process and answers
the image (or a JSON receipt when the result went to an output URL); ``GET /healthz``.

Every error is ``{"error": {"code", "message", ...}}`` with its 4xx status (docs/mediagen.md);
an unexpected failure is logged and answered 500 without internals.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from cgn_common.logs import log_event
from dservices.mediagen.config import MediaGenConfig
from dservices.mediagen.errors import MediaGenError, internal_error
from dservices.mediagen.job import JSON_TYPE, JobResult
from dservices.mediagen.mrl import job_from_request
from dservices.mediagen.worker import WorkerPool

_log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", MediaGenConfig)
POOL_KEY = web.AppKey("pool", WorkerPool)


async def _mrl(request: web.Request) -> web.Response:
    config, pool = request.app[CONFIG_KEY], request.app[POOL_KEY]
    started = time.perf_counter()
    try:
        job = await job_from_request(request, config)
        result = await pool.run(job)
    except MediaGenError as exc:
        result = JobResult.error(exc)
    except Exception:
        log_event(_log, "mediagen_internal_error", logging.ERROR, exc_info=True)
        result = JobResult.error(internal_error("internal error"))
    log_event(
        _log,
        "mgen_request",
        status=result.status,
        error=result.error_code or None,
        bytes=len(result.body),
        steps=result.steps,
        fetches=result.fetches,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    headers = {"Content-Type": result.content_type, "Cache-Control": "no-store"}
    if result.content_type == JSON_TYPE:
        headers["Content-Type"] = f"{JSON_TYPE}; charset=utf-8"
    if result.status == 503:
        headers["Retry-After"] = "1"
    return web.Response(status=result.status, body=result.body, headers=headers)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "serving"})


async def _not_found(request: web.Request) -> web.Response:
    return web.json_response(
        {"error": {"code": "not_found", "message": f"no route for {request.path}; use /mgen/io"}},
        status=404,
    )


def make_app(config: MediaGenConfig, pool: WorkerPool) -> web.Application:
    """The application around a started :class:`WorkerPool`."""
    app = web.Application(client_max_size=config.max_script_bytes + 1)
    app[CONFIG_KEY] = config
    app[POOL_KEY] = pool
    app.router.add_route("GET", "/mgen/io", _mrl)
    app.router.add_route("POST", "/mgen/io", _mrl)
    app.router.add_get("/healthz", _healthz)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def serve(listen: str, config: MediaGenConfig, stop: asyncio.Event | None = None) -> None:
    """Starts the workers, then serves on ``listen`` (``host:port`` or ``unix:/path``) until
    SIGTERM/SIGINT or ``stop``."""
    pool = WorkerPool(config)
    await pool.start()
    runner = web.AppRunner(make_app(config, pool), access_log=None, handle_signals=False)
    await runner.setup()
    site: web.BaseSite
    if listen.startswith("unix:"):
        site = web.UnixSite(runner, listen[len("unix:") :])
    else:
        host, _, port = listen.rpartition(":")
        site = web.TCPSite(runner, host or "127.0.0.1", int(port))
    await site.start()
    log_event(_log, "mediagen_serving", listen=listen, workers=pool.size)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await pool.stop()
