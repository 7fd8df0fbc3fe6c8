"""CORS for browser DApps (the Fetch standard's CORS protocol), from the gateway's
``cors_*`` options.

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered
  here, on every path, without a session token: 204 with the allowed methods and headers and
  ``Access-Control-Max-Age`` when the origin, the method and every requested header are
  allowed, else 403 ``CORS_REFUSED`` with no ``Access-Control-*`` header (the browser then
  refuses the call). A DService never sees a preflight; a plain ``OPTIONS`` reaches it.
- Every other answer to an allowed origin, a DService's and an error alike, gets
  ``Access-Control-Allow-Origin`` (the origin itself), ``Vary: Origin`` and the CGN's headers
  in ``Access-Control-Expose-Headers``; a DService's own ``Access-Control-*`` headers give way
  to them (two would make the browser refuse the answer). Answers to other origins are left as
  they are.
- No credentials mode: the token travels in a header, never in a cookie.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.config import GatewayConfig
from gateway.errors import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Headers of the CGN's answers a page's script may read besides the CORS-safelisted ones.
EXPOSED_HEADERS = ("X-Request-Id", "X-CGN-Error", "Retry-After", "WWW-Authenticate", "Allow")


def _origin_allowed(config: GatewayConfig, origin: str) -> bool:
    allowed = config.cors_allowed_origins
    return bool(origin) and ("*" in allowed or origin in allowed)


def preflight(config: GatewayConfig) -> Middleware:
    """The middleware that answers preflights before routing, authentication or a DService."""
    methods = {m.upper() for m in config.cors_allowed_methods}
    headers = {h.lower() for h in config.cors_allowed_headers}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        asked = request.headers.get("Access-Control-Request-Method")
        origin = request.headers.get("Origin", "")
        if request.method != "OPTIONS" or asked is None or not origin:
            return await handler(request)
        wanted = {
            h.strip().lower()
            for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
            if h.strip()
        }
        if not _origin_allowed(config, origin) or asked not in methods or not wanted <= headers:
            return error_response(
                grpc.StatusCode.PERMISSION_DENIED,
                "this cross-origin request is not allowed (origin, method or headers)",
                reason="CORS_REFUSED",
            )
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ", ".join(config.cors_allowed_methods),
                "Access-Control-Allow-Headers": ", ".join(config.cors_allowed_headers),
                "Access-Control-Max-Age": str(config.cors_max_age_s),
                "Vary": "Origin",
                "Server": "cgn-gateway",
            },
        )

    return middleware


def response_headers(
    config: GatewayConfig,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """The ``on_response_prepare`` hook that marks answers to allowed origins readable."""

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin", "")
        if not _origin_allowed(config, origin) or "Access-Control-Max-Age" in response.headers:
            return  # another origin, or a preflight answered above
        for name in [n for n in response.headers if n.lower().startswith("access-control-")]:
            del response.headers[name]
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
        response.headers.add("Vary", "Origin")

    return hook
