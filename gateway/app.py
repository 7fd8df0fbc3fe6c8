"""The gateway's HTTP routes.

- ``POST /v1/sessions`` ``{"account_id", "api_key"}`` -> ``{"token", "expires_at"}``
- ``DELETE /v1/sessions`` (with the token) -> ``{"revoked": true}``: the session ends on
  every node
- ``ANY /v1/dservices/{name}/{path}`` -> the DService's status, headers and body
- ``GET /v1/ledger/rows`` (public) and ``GET /v1/ledger/requests/{request_id}`` (the
  caller's own) -> the node's ledger rows in proto3 JSON
- ``GET /healthz`` -> 200 while the gateway runs
Errors are ``{"error": {"code": <gRPC status name>, "message": ...}}`` with ``X-CGN-Error: 1``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from multidict import CIMultiDict

from cgn_common.http import HOP_BY_HOP
from cgn_common.ids import REQUEST_ID, new_id
from cgn_common.logs import log_event
from cgn_common.status import rpc_details
from gateway._rpc import NodeClient
from gateway.config import GatewayConfig
from gateway.errors import SERVER_NAME, error_response
from generated.cgn.ledger.v1 import ledger_service_pb2 as ledger_pb

_log = logging.getLogger(__name__)

#: Request headers never forwarded to a DService: hop-by-hop (RFC 9110 7.6.1), the CGN's own
#: credentials, and framing the gateway recomputes.
STRIPPED_REQUEST_HEADERS = HOP_BY_HOP | {
    "authorization",
    "content-length",
    # Carried as the request id and set again by the miner; never forwarded twice.
    "x-request-id",
    "x-cgn-timeout-ms",
}
_STRIPPED_RESPONSE_HEADERS = STRIPPED_REQUEST_HEADERS - {"authorization", "x-request-id"}

#: Where a handler keeps the request id, for the error middleware.
_REQUEST_ID = web.RequestKey("cgn_request_id", str)

CONFIG_KEY = web.AppKey("config", GatewayConfig)
NODE_KEY = web.AppKey("node", NodeClient)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BodyTooLargeError(Exception):
    pass


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> web.Response:
    return error_response(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request body exceeds {limit} bytes",
        http_status=413,
        reason="BODY_TOO_LARGE",
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into the JSON error shape; never leaks internals."""
    config = request.app[CONFIG_KEY]
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.INTERNAL:
            log_event(_log, "node_internal_error", logging.ERROR, path=request.path)
        reason, retry_after = rpc_details(exc)
        if reason == "CERTIFICATE_REVOKED":
            log_event(_log, "gateway_certificate_revoked", logging.ERROR, path=request.path)
        return error_response(
            exc.code(),
            exc.details() or exc.code().name,
            retry_after_s=max(1, math.ceil(retry_after)) if retry_after else config.retry_after_s,
            reason=reason,
            request_id=request.get(_REQUEST_ID, ""),
        )
    except web.HTTPException as exc:
        code = {
            404: grpc.StatusCode.NOT_FOUND,
            405: grpc.StatusCode.UNIMPLEMENTED,
            413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        }.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT)
        return error_response(code, exc.reason, http_status=exc.status)
    except Exception as exc:
        log_event(_log, "gateway_internal_error", logging.ERROR, exc=exc, path=request.path)
        return error_response(grpc.StatusCode.INTERNAL, "internal error")


async def create_session(request: web.Request) -> web.Response:
    """``POST /v1/sessions``."""
    config = request.app[CONFIG_KEY]
    try:
        raw = await _read_limited(request, config.max_control_body_bytes)
    except _BodyTooLargeError:
        return _too_large(config.max_control_body_bytes)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error_response(
            grpc.StatusCode.INVALID_ARGUMENT, "body is not valid JSON", reason="BAD_JSON"
        )
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("account_id"), str)
        or not isinstance(data.get("api_key"), str)
    ):
        return error_response(
            grpc.StatusCode.INVALID_ARGUMENT,
            'body must be {"account_id": "<string>", "api_key": "<string>"}',
        )
    token, expires_at = await request.app[NODE_KEY].create_session(
        data["account_id"], data["api_key"], timeout_s=30.0, client_address=request.remote or ""
    )
    expires = datetime.fromtimestamp(expires_at, UTC).isoformat().replace("+00:00", "Z")
    return web.json_response(
        {"token": token, "expires_at": expires}, headers={"Server": SERVER_NAME}
    )


def _bearer_token(request: web.Request) -> str:
    """The session token in ``Authorization: Bearer <token>`` (scheme case-insensitive)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _session_missing(request_id: str = "") -> web.Response:
    return error_response(
        grpc.StatusCode.UNAUTHENTICATED,
        "a session token is required (Authorization: Bearer)",
        reason="SESSION_MISSING",
        request_id=request_id,
    )


async def revoke_session(request: web.Request) -> web.Response:
    """``DELETE /v1/sessions``: ends the caller's own session on every node."""
    token = _bearer_token(request)
    if not token:
        return _session_missing()
    if not await request.app[NODE_KEY].revoke_session(token, timeout_s=30.0):
        return error_response(
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid or expired session token",
            reason="SESSION_INVALID",
        )
    return web.json_response({"revoked": True}, headers={"Server": SERVER_NAME})


def _query_time(request: web.Request, name: str) -> Timestamp | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _ledger_json(message: Message) -> web.Response:
    """A ledger answer in proto3's JSON mapping (bytes as base64, field names as in the
    protos, default values left out: an empty column has no ``value``), so that a DApp
    decodes it the way a gRPC client would."""
    body = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return web.json_response(body, headers={"Server": SERVER_NAME})


async def list_ledger_rows(request: web.Request) -> web.Response:
    """``GET /v1/ledger/rows``: the node's public rows, a page at a time (no token needed:
    the public view is open to anyone; docs/ledger.md, "Views")."""
    page_size = request.query.get("page_size", "0")
    if not page_size.isdigit():
        raise web.HTTPBadRequest(reason="page_size must be a whole number")
    ask = ledger_pb.ListRowsRequest(
        enterprise_pseudonym=request.query.get("enterprise", ""),
        page_size=int(page_size),
        page_token=request.query.get("page_token", ""),
    )
    for name, field in (("start", "start_time"), ("end", "end_time")):
        stamp = _query_time(request, name)
        if stamp is not None:
            getattr(ask, field).CopyFrom(stamp)
    return _ledger_json(await request.app[NODE_KEY].list_rows(ask, timeout_s=30.0))


async def ledger_rows_of_request(request: web.Request) -> web.Response:
    """``GET /v1/ledger/requests/{request_id}``: the caller's own rows of one request, with
    fee, usage and private columns (session token required)."""
    token = _bearer_token(request)
    if not token:
        return _session_missing()
    request_id = request.match_info["request_id"]
    if not REQUEST_ID.match(request_id):
        raise web.HTTPBadRequest(reason="request_id: 1-128 of A-Z a-z 0-9 . _ -")
    found = await request.app[NODE_KEY].rows_by_request(token, request_id, timeout_s=30.0)
    if not found.rows:
        return error_response(
            grpc.StatusCode.NOT_FOUND,
            f"no row of yours for request {request_id}",
            reason="LEDGER_ROW_NOT_FOUND",
        )
    return _ledger_json(found)


def _request_id(request: web.Request) -> str:
    """The DApp's X-Request-Id when it is valid, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    return given if REQUEST_ID.match(given) else new_id("req")


def _timeout_s(request: web.Request, maximum_s: float) -> float:
    """The DApp's ``X-CGN-Timeout-Ms``, capped by the configured maximum."""
    raw = request.headers.get("X-CGN-Timeout-Ms")
    if raw is None:
        return maximum_s
    if not raw.isdigit() or not 0 < int(raw) <= 86_400_000:
        raise web.HTTPBadRequest(reason="X-CGN-Timeout-Ms must be a whole number of ms > 0")
    return min(maximum_s, int(raw) / 1000)


async def call_dservice(request: web.Request) -> web.Response:
    """``ANY /v1/dservices/{name}/{path}``: forwards the request unchanged."""
    config = request.app[CONFIG_KEY]
    request_id = request[_REQUEST_ID] = _request_id(request)
    timeout_s = _timeout_s(request, float(config.request_timeout_s))
    token = _bearer_token(request)
    if not token:
        return _session_missing(request_id)
    name = request.match_info["name"]
    raw_path = request.raw_path.split("?", 1)[0]
    prefix = f"/v1/dservices/{name}"
    path = raw_path[len(prefix) :] if raw_path.startswith(prefix) else "/"
    path = path or "/"
    try:
        body = await _read_limited(request, config.max_work_body_bytes)
    except _BodyTooLargeError:
        return _too_large(config.max_work_body_bytes)
    headers = [
        (n.decode("latin-1"), v)
        for n, v in request.raw_headers
        if n.decode("latin-1").lower() not in STRIPPED_REQUEST_HEADERS
    ]
    status, response_headers, response_body = await request.app[NODE_KEY].call(
        token,
        name,
        request.method,
        path,
        request.rel_url.raw_query_string,
        headers,
        body,
        timeout_s=timeout_s,
        request_id=request_id,
    )
    out: CIMultiDict[str] = CIMultiDict()
    for n, v in response_headers:
        if n.lower() not in _STRIPPED_RESPONSE_HEADERS:
            out.add(n, v.decode("latin-1"))
    if "Server" not in out:
        out["Server"] = SERVER_NAME
    out["X-Request-Id"] = request_id
    return web.Response(status=status, headers=out, body=response_body)


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``."""
    return web.json_response({"status": "serving"}, headers={"Server": SERVER_NAME})


async def _not_found(request: web.Request) -> web.Response:
    return error_response(
        grpc.StatusCode.NOT_FOUND, f"no route for {request.path}", reason="NO_ROUTE"
    )


def make_app(config: GatewayConfig, node: NodeClient) -> web.Application:
    """Builds the gateway application around a node client."""
    app = web.Application(middlewares=[_errors], client_max_size=config.max_work_body_bytes)
    app[CONFIG_KEY] = config
    app[NODE_KEY] = node
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_delete("/v1/sessions", revoke_session)
    app.router.add_get("/v1/ledger/rows", list_ledger_rows)
    app.router.add_get("/v1/ledger/requests/{request_id}", ledger_rows_of_request)
    app.router.add_route("*", "/v1/dservices/{name}/{path:.*}", call_dservice)
    app.router.add_route("*", "/v1/dservices/{name}", call_dservice)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app
