"""The gateway's HTTP server on aiohttp, hardened for the open internet: its limits and
timeouts, and the JSON error shape for requests aiohttp's parser refuses before any route runs.

aiohttp answers a request it cannot parse (an invalid method, bytes that are not HTTP, too many
or too long header lines) from ``RequestHandler.handle_error``: plain text, logged at ERROR
with a traceback, and no middleware sees it. No public hook replaces that answer, so
:class:`_Handler` overrides the method, and :class:`GatewayRunner` makes aiohttp's server build
connections with it (``tests/gateway/test_limits.py`` fails if an aiohttp upgrade moves this).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, HttpProcessingError, LineTooLong

from cgn_common.logs import log_event
from gateway.config import GatewayConfig
from gateway.errors import error_response

_log = logging.getLogger(__name__)


def _parse_error(exc: BaseException | None, max_header_bytes: int) -> web.Response:
    """The JSON answer to a request aiohttp's parser refused; never echoes the request."""
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message
    ):
        return error_response(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"too many header lines, or a request or header line over {max_header_bytes} bytes",
            http_status=431,
            reason="HEADERS_TOO_LARGE",
        )
    message = "malformed HTTP/1.1 request"
    if isinstance(exc, BadHttpMethod):
        message = "unknown or malformed method (or bytes that are not HTTP/1.1)"
    return error_response(grpc.StatusCode.INVALID_ARGUMENT, message, reason="BAD_HTTP_REQUEST")


class _Handler(web.RequestHandler):
    """aiohttp's connection handler whose own error answers are the CGN's JSON errors."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of an answer is out: no second one fits; aiohttp closes the connection.
            raise ConnectionError("an answer was already started")
        if status == 504:  # a handler timed out outside the error middleware
            response = error_response(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the request took too long"
            )
        elif isinstance(exc, HttpProcessingError) or status != 500:
            # An attacker's or a broken client's bytes: worth a line, not a traceback.
            log_event(
                _log,
                "http_request_refused",
                logging.INFO,
                status=status,
                error=type(exc).__name__ if exc else "",
                peer=request.remote or "",
            )
            response = _parse_error(exc, self.max_field_size)
        else:
            log_event(_log, "gateway_internal_error", logging.ERROR, exc=exc, path=request.path)
            response = error_response(grpc.StatusCode.INTERNAL, "internal error")
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's server, building each connection's handler as :class:`_Handler`."""

    def __call__(self) -> web.RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


def limits(config: GatewayConfig) -> dict[str, Any]:
    """aiohttp's settings for the gateway's limits and timeouts (bench/ mirrors them too)."""
    return {
        # One timer: no complete request head this long after connect or after an answer.
        "keepalive_timeout": float(config.idle_timeout_s),
        "max_headers": config.max_headers,
        "max_line_size": config.max_header_bytes,
        "max_field_size": config.max_header_bytes,
        # A body nobody read is never drained: the connection closes after the answer.
        "lingering_time": 0,
        # Bodies pass byte for byte: a gzip upload reaches the DService still gzip (aiohttp
        # would inflate it, under the original Content-Encoding and Content-Length).
        "auto_decompress": False,
    }


class GatewayRunner(web.AppRunner):
    """An AppRunner with the gateway's limits and timeouts, whose server is :class:`_Server`."""

    def __init__(self, app: web.Application, config: GatewayConfig) -> None:
        super().__init__(
            app,
            access_log=None,
            handle_signals=False,
            # A DApp that disconnects cancels its call, and with it the work.
            handler_cancellation=True,
            **limits(config),
        )

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )
