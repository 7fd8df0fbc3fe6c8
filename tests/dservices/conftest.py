"""Fixtures for the DService tests: a loopback HTTP server that serves scripts and images,
redirects, and accepts PUTs (the test's stand-in for cloud storage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web


@dataclass
class FileServer:
    """Files served on GET, bodies received by PUT, and the base URL."""

    base: str = ""
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    puts: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    put_received: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, name: str, data: bytes | str, content_type: str = "") -> str:
        """Serves ``data`` at ``/name``; returns its URL."""
        raw = data.encode() if isinstance(data, str) else data
        self.files[name] = (raw, content_type or "application/octet-stream")
        return self.url(name)

    def url(self, name: str) -> str:
        """The URL of ``/name``."""
        return f"{self.base}/{name}"


@pytest.fixture
async def files() -> AsyncIterator[FileServer]:
    """A loopback server on a free port: GET /<name>, PUT /<name>, GET /redirect/<n>/<name>
    (n redirects, then the file), GET /redirect-to?url=<URL>."""
    server = FileServer()

    async def get(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in server.files:
            return web.Response(status=404, text="no such file")
        body, content_type = server.files[name]
        return web.Response(body=body, content_type=content_type)

    async def put(request: web.Request) -> web.Response:
        server.puts[request.match_info["name"]] = (
            await request.read(),
            request.headers.get("Content-Type", ""),
        )
        server.put_received.set()
        return web.Response(status=201)

    async def redirect(request: web.Request) -> web.Response:
        hops, name = int(request.match_info["hops"]), request.match_info["name"]
        target = f"/redirect/{hops - 1}/{name}" if hops > 1 else f"/{name}"
        raise web.HTTPFound(target)

    async def redirect_to(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["url"])

    app = web.Application()
    app.router.add_get("/redirect/{hops}/{name}", redirect)
    app.router.add_get("/redirect-to", redirect_to)
    app.router.add_get("/{name}", get)
    app.router.add_put("/{name}", put)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.base = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()
