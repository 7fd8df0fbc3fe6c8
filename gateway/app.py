"""The gateway's HTTP routes.

- ``POST /v1/sessions`` ``{"account_id", "api_key"}`` -> ``{"token", "expires_at"}``
- ``DELETE /v1/sessions`` (with the token) -> ``{"revoked": true}``: the session ends on
  every node
- ``ANY /v1/dservices/{name}/{path}`` -> the DService's status, headers and body
- ``GET /v1/ledger/rows`` (public) and ``GET /v1/ledger/requests/{request_id}`` (the
  caller's own) -> the node's ledger rows in proto3 JSON
- ``GET /healthz`` -> 200 while the gateway runs
- ``GET /v1/openapi.json`` -> the OpenAPI 3.1 document of all of this (gateway/openapi.py)
Errors are ``{"error": {"code": <gRPC status name>, "message": ..., "reason": ...}}`` with
``X-CGN-Error: 1``; a known path with another method is 405 with ``Allow``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cgn_common.errors import CgnError
from cgn_common.http import check_request, end_to_end
from cgn_common.ids import REQUEST_ID, new_id
from cgn_common.logs import log_event
from cgn_common.status import rpc_details, write_hid_the_status
from cgn_common.streams import BODY_CHUNK_BYTES, INLINE_BODY_BYTES
from gateway import cors, openapi
from gateway._rpc import NodeClient, work_options
from gateway.config import GatewayConfig
from gateway.errors import SERVER_NAME, SESSION_HEADER, error_response
from generated.cgn.common.v1 import http_pb2
from generated.cgn.ledger.v1 import ledger_service_pb2 as ledger_pb
from generated.cgn.work.v1 import work_service_pb2 as work_pb

_log = logging.getLogger(__name__)

#: Request headers the gateway never forwards to a DService (besides hop-by-hop ones and
#: those named in ``Connection``): the CGN's own session header, ``Host`` (sent on as
#: ``X-Forwarded-Host``; the miner writes the listener's own), the ``X-Forwarded-*`` headers
#: the gateway sets itself, and the CGN's per-request options.
STRIPPED_REQUEST_HEADERS = frozenset(
    {
        SESSION_HEADER.lower(),
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
        # Carried as the request id and set again by the miner; never forwarded twice.
        "x-request-id",
        "x-cgn-timeout-ms",
    }
)
_STRIPPED_WITH_AUTHORIZATION = STRIPPED_REQUEST_HEADERS | {"authorization"}
#: Answer headers the gateway replaces: ``Server`` (no DService version leaks) and
#: ``X-Request-Id`` (the CGN's).
_REPLACED_RESPONSE_HEADERS = frozenset({"server", "x-request-id"})

_DSERVICES_PREFIX = "/v1/dservices/"

#: Where a handler keeps the request id, for the error middleware.
_REQUEST_ID = web.RequestKey("cgn_request_id", str)
#: Set when the DApp waits for ``100 Continue`` before its body, not yet sent.
_EXPECTING = web.RequestKey("cgn_expecting", bool)

CONFIG_KEY = web.AppKey("config", GatewayConfig)
NODE_KEY = web.AppKey("node", NodeClient)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BodyRefusedError(Exception):
    """A request body refused while it was read (too large, silent too long, or malformed);
    :meth:`answer` is the JSON error, after which the connection closes, so the rest of the
    body is never read."""

    def __init__(
        self, code: grpc.StatusCode, message: str, reason: str, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.http_status = http_status

    def answer(self, request_id: str = "") -> web.Response:
        response = error_response(
            self.code,
            self.message,
            http_status=self.http_status,
            reason=self.reason,
            request_id=request_id,
        )
        response.force_close()
        return response


def _too_large_error(limit: int) -> _BodyRefusedError:
    return _BodyRefusedError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request body exceeds {limit} bytes",
        "BODY_TOO_LARGE",
        http_status=413,
    )


def _too_large(limit: int, request_id: str = "") -> web.Response:
    """413; the connection closes after it, so an unread body is never drained."""
    return _too_large_error(limit).answer(request_id)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, refused unread when ``Content-Length`` is over ``limit`` (see
    :func:`_body_slices` for the rest)."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large_error(limit)
    content = request.content
    if content.is_eof() and content.exception() is None:
        # The whole body came with the head (a small one usually does): take it as it is,
        # without the slices' timer and generator, which only matter while bytes are due.
        body = content.read_nowait()
        if len(body) > limit:
            raise _too_large_error(limit)
        return body
    return b"".join([data async for data in _body_slices(request, limit)])


async def _read_body(
    request: web.Request, limit: int, request_id: str = ""
) -> bytes | web.Response:
    """The body, or the error answer that refuses it."""
    try:
        return await _read_limited(request, limit)
    except _BodyRefusedError as refused:
        return refused.answer(request_id)


def _expect_within(
    limit: int, *, deferred: bool = False
) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """An ``Expect`` handler: ``100 Continue`` only when the announced body fits ``limit``;
    a body ``Content-Length`` shows too big is refused with 413 before the DApp sends it.
    ``deferred``: the handler sends the 100 itself (:func:`_continue`) once the node has
    accepted the request, so a body the account's or DService's limit refuses is never sent."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("Expect", "").lower() != "100-continue":
            return error_response(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the only expectation understood is 100-continue",
                http_status=417,
                reason="EXPECTATION_FAILED",
            )
        if request.content_length is not None and request.content_length > limit:
            return _too_large(limit)
        if deferred:
            request[_EXPECTING] = True
        else:
            await _continue(request)
        return None

    return expect


async def _continue(request: web.Request) -> None:
    """``100 Continue`` to a DApp that waits for it before sending its body."""
    request[_EXPECTING] = False
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into the JSON error shape; never leaks internals."""
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as exc:
        return _rpc_error(request, exc)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = error_response(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{request.method[:32]} is not allowed here; allowed: {allowed}",
            http_status=405,
            reason="METHOD_NOT_ALLOWED",
        )
        response.headers["Allow"] = allowed
        return response
    except web.HTTPNotFound:
        return error_response(
            grpc.StatusCode.NOT_FOUND, f"no route for {request.path[:200]}", reason="NO_ROUTE"
        )
    except web.HTTPException as exc:
        code = {413: grpc.StatusCode.RESOURCE_EXHAUSTED}.get(
            exc.status, grpc.StatusCode.INVALID_ARGUMENT
        )
        return error_response(code, exc.reason, http_status=exc.status)
    except Exception as exc:
        log_event(_log, "gateway_internal_error", logging.ERROR, exc=exc, path=request.path)
        return error_response(grpc.StatusCode.INTERNAL, "internal error")


async def _accepted(call: Any, start: work_pb.CallStart) -> work_pb.CallStreamResponse:
    """Writes a CallStream's start and reads the node's acceptance (its refusal raises: the
    body is never read)."""
    await call.write(work_pb.CallStreamRequest(start=start))
    accepted: work_pb.CallStreamResponse = await call.read()
    return accepted


def _rpc_error(request: web.Request, exc: grpc.aio.AioRpcError) -> web.Response:
    """The JSON error of a failed call to the node."""
    config = request.app[CONFIG_KEY]
    if exc.code() is grpc.StatusCode.INTERNAL:
        log_event(_log, "node_internal_error", logging.ERROR, path=request.path)
    reason, retry_after = rpc_details(exc)
    if reason == "CERTIFICATE_REVOKED":
        log_event(_log, "gateway_certificate_revoked", logging.ERROR, path=request.path)
    message = exc.details() or exc.code().name
    if not reason:
        # Not the node's own answer but the channel's (e.g. "failed to connect to
        # ipv4:10.0.0.5:9091"): internal addresses stay in the log.
        log_event(_log, "node_call_failed", logging.WARNING, code=exc.code().name, detail=message)
        message, reason = _CHANNEL_ERRORS.get(exc.code(), (exc.code().name, ""))
    return error_response(
        exc.code(),
        message,
        retry_after_s=max(1, math.ceil(retry_after)) if retry_after else config.retry_after_s,
        reason=reason,
        request_id=request.get(_REQUEST_ID, ""),
    )


#: What a failed call to the node says when the node itself did not answer (no reason).
_CHANNEL_ERRORS: dict[grpc.StatusCode, tuple[str, str]] = {
    grpc.StatusCode.UNAVAILABLE: ("the CGN node cannot be reached; try again", "NODE_UNAVAILABLE"),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("the request's deadline passed", "DEADLINE_EXCEEDED"),
    grpc.StatusCode.CANCELLED: ("the call was cancelled", "CANCELLED"),
}


def _utf8(value: object) -> bool:
    """True for a string that protobuf can carry (no lone surrogates such as ``\\ud800``)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def create_session(request: web.Request) -> web.Response:
    """``POST /v1/sessions``."""
    config = request.app[CONFIG_KEY]
    raw = await _read_body(request, config.max_control_body_bytes)
    if isinstance(raw, web.Response):
        return raw
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError; deep nesting
        return error_response(
            grpc.StatusCode.INVALID_ARGUMENT, "body is not valid JSON", reason="BAD_JSON"
        )
    if (
        not isinstance(data, dict)
        or not _utf8(data.get("account_id"))
        or not _utf8(data.get("api_key"))
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
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _well_formed(token: str) -> bool:
    """A token can only be visible ASCII; anything else (e.g. a raw non-ASCII byte, which
    gRPC metadata cannot carry) is refused here as invalid, without asking the node."""
    return token.isascii() and token.isprintable() and " " not in token


def _session_invalid(request_id: str = "") -> web.Response:
    return error_response(
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid or expired session token",
        reason="SESSION_INVALID",
        request_id=request_id,
    )


def _session_token(request: web.Request) -> tuple[str, bool]:
    """The session token of a DService call and whether ``Authorization`` carried it.

    The rule (docs/dservices.md, "Authentication"): a request with ``X-CGN-Session`` carries
    the token there, and its ``Authorization`` belongs to the DService, passed on untouched;
    a request without it carries the token as ``Authorization: Bearer``, which is then the
    CGN's and not forwarded (how every DApp did it before, and still may)."""
    if SESSION_HEADER in request.headers:
        return request.headers[SESSION_HEADER].strip(), False
    return _bearer_token(request), True


def _session_missing(request_id: str = "") -> web.Response:
    return error_response(
        grpc.StatusCode.UNAUTHENTICATED,
        f"a session token is required ({SESSION_HEADER}, or Authorization: Bearer)",
        reason="SESSION_MISSING",
        request_id=request_id,
    )


async def revoke_session(request: web.Request) -> web.Response:
    """``DELETE /v1/sessions``: ends the caller's own session on every node."""
    token = _bearer_token(request)
    if not token:
        return _session_missing()
    if not _well_formed(token) or not await request.app[NODE_KEY].revoke_session(
        token, timeout_s=30.0
    ):
        return _session_invalid()
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
    if not _well_formed(token):
        return _session_invalid()
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


def _split_target(request: web.Request) -> tuple[str, str]:
    """The DService name and the path below it, from the raw path as the DApp wrote it."""
    raw_path = request.raw_path.split("?", 1)[0]
    if not raw_path.startswith(_DSERVICES_PREFIX):
        # The router matched a normalized path (e.g. "/v1/./dservices/..."): not as written.
        raise web.HTTPNotFound(reason=f"no route for {raw_path[:200]}")
    rest = raw_path[len(_DSERVICES_PREFIX) :]
    name, slash, path = rest.partition("/")
    return name, slash + path or "/"


def _forwarded(request: web.Request, name: str) -> list[tuple[str, bytes]]:
    """The ``X-Forwarded-*`` headers the DService gets, so it can build its own URLs."""
    out = [
        ("X-Forwarded-For", (request.remote or "").encode("latin-1")),
        ("X-Forwarded-Proto", request.scheme.encode("latin-1")),
    ]
    out += [("X-Forwarded-Host", v) for n, v in request.raw_headers if n.lower() == b"host"][:1]
    out.append(("X-Forwarded-Prefix", f"/v1/dservices/{name}".encode("latin-1")))
    return out


class ProxiedResponse(web.Response):
    """A DService's answer: its headers go out exactly as listed in :attr:`exact`, restored
    after aiohttp prepared its own (which invents ``Content-Type`` and drops the framing of
    HEAD and 304 answers); see :func:`_restore_headers`."""

    exact: list[tuple[str, str]]


class ProxiedStream(web.StreamResponse):
    """A DService's answer whose body streams: headers as for :class:`ProxiedResponse`."""

    exact: list[tuple[str, str]]


def _response_headers(
    headers: list[tuple[str, bytes]], request_id: str
) -> list[tuple[str, str]] | None:
    """The DService's end-to-end answer headers, ``Server`` and ``X-Request-Id`` ours, as
    ``str`` (aiohttp writes ``str`` as UTF-8: a value that is not UTF-8 cannot pass, None)."""
    try:
        out = [(n, v.decode("utf-8")) for n, v in end_to_end(headers, _REPLACED_RESPONSE_HEADERS)]
    except UnicodeDecodeError:
        return None
    out.append(("Server", SERVER_NAME))
    out.append(("X-Request-Id", request_id))
    return out


async def _restore_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: a proxied answer's headers, exactly as the DService sent them
    (plus ``Date`` when it sent none, as RFC 9110 6.6.1 asks of a proxy), and
    ``Content-Length`` as aiohttp framed the body when the DService had chunked it."""
    if not isinstance(response, ProxiedResponse | ProxiedStream):
        return
    prepared = response.headers
    # aiohttp's framing and connection handling stay; nothing else of its own.
    framing = ("Date", "Content-Length", "Transfer-Encoding", "Connection")
    kept = {k: prepared[k] for k in framing if k in prepared}
    prepared.clear()
    prepared.extend(response.exact)
    for name, value in kept.items():
        if name not in prepared:
            prepared[name] = value


async def call_dservice(request: web.Request) -> web.StreamResponse:
    """``ANY /v1/dservices/{name}/{path}``: forwards the request unchanged."""
    config = request.app[CONFIG_KEY]
    request_id = request[_REQUEST_ID] = _request_id(request)
    timeout_s = _timeout_s(request, float(config.request_timeout_s))
    name, path = _split_target(request)
    if "%" in name:
        return error_response(
            grpc.StatusCode.NOT_FOUND,
            f"DService names are matched as written: {name!r} is percent-encoded",
            reason="DSERVICE_NAME_ENCODED",
            request_id=request_id,
        )
    if "Upgrade" in request.headers:
        return error_response(
            grpc.StatusCode.UNIMPLEMENTED,
            "protocol upgrades (WebSocket) are not supported through the CGN yet",
            reason="UPGRADE_NOT_SUPPORTED",
            request_id=request_id,
        )
    token, in_authorization = _session_token(request)
    if not token:
        return _session_missing(request_id)
    if not _well_formed(token):
        return _session_invalid(request_id)
    raw = [(n.decode("latin-1"), v) for n, v in request.raw_headers]
    drop = _STRIPPED_WITH_AUTHORIZATION if in_authorization else STRIPPED_REQUEST_HEADERS
    headers = end_to_end(raw, drop) + _forwarded(request, name)
    head = http_pb2.HttpRequestHead(
        method=request.method, path=path, query=request.rel_url.raw_query_string
    )
    add = head.headers.add  # in place: half the cost of building HttpHeaders and copying them
    for header_name, value in headers:
        add(name=header_name, value=value)
    length = request.content_length
    if length is not None and length > config.max_work_body_bytes:
        return _too_large(config.max_work_body_bytes, request_id)
    call = _Call(request, token, name, head, headers, timeout_s)
    if request.can_read_body and (length is None or length > INLINE_BODY_BYTES):
        return await call.streamed_in()
    return await call.whole()


class _Call:
    """One DService call through the node: a body at hand goes in a unary ``Call``, a large
    or chunked one streams in through ``CallStream`` (the node spools it, so a re-dispatch
    can resend it). Either way the answer streams out as the DService sends it when it has
    no ``Content-Length`` or a large one, and a cut answer ends the DApp's connection short
    (docs/architecture.md, "Data plane")."""

    def __init__(
        self,
        request: web.Request,
        token: str,
        dservice: str,
        head: http_pb2.HttpRequestHead,
        headers: list[tuple[str, bytes]],
        timeout_s: float,
    ) -> None:
        self.request = request
        self.token = token
        self.dservice = dservice
        self.head = head
        #: ``head``'s headers as pairs, which check_request reads.
        self.headers = headers
        #: How long the work may take until the answer's head (the DApp's
        #: ``X-CGN-Timeout-Ms``, capped): the bodies' transfers do not count.
        self.timeout_s = timeout_s
        self.config = request.app[CONFIG_KEY]
        self.node = request.app[NODE_KEY]
        self.request_id = request[_REQUEST_ID]

    def _checked(self, body_length: int) -> web.Response | None:
        head = self.head
        try:
            check_request(
                head.method,
                head.path,
                head.query,
                self.headers,
                body_length,
                self.config.max_work_body_bytes,
            )
        except CgnError as exc:
            return error_response(exc.code, exc.message, request_id=self.request_id)
        return None

    async def whole(self) -> web.StreamResponse:
        """A body of at most INLINE_BODY_BYTES (or none): read, then one ``Call``."""
        if self.request.get(_EXPECTING):
            await _continue(self.request)
        body = await _read_body(self.request, self.config.max_work_body_bytes, self.request_id)
        if isinstance(body, web.Response):
            return body
        refused = self._checked(len(body))
        if refused is not None:
            return refused
        self.head.content_length = len(body)
        response = await self.node.call(
            self.token,
            self.dservice,
            self.head,
            body,
            timeout_s=self.timeout_s,
            request_id=self.request_id,
        )
        if not response.answer_token:
            return self._answer(response.head, response.body)
        call = self.node.read_answer(self.token, response.answer_token)
        return await self._stream_out(response.head, call)

    async def streamed_in(self) -> web.StreamResponse:
        """A large or chunked body: ``CallStream``, its start first; the body is read from the
        DApp only once the node accepted the start (limits checked against
        ``Content-Length``), and sent on as it comes, flow control pacing the DApp."""
        request = self.request
        if request.content_length is not None:
            self.head.content_length = request.content_length
        refused = self._checked(self.head.content_length)
        if refused is not None:
            return refused
        start = work_pb.CallStart(
            dservice=self.dservice,
            head=self.head,
            options=work_options(self.request_id, self.timeout_s),
            await_accept=True,
        )
        call = self.node.call_stream(self.token)
        try:
            try:
                accepted = await _accepted(call, start)
            except grpc.aio.AioRpcError as exc:
                if not write_hid_the_status(exc):
                    raise
                # The node ended the call (e.g. refused its session) as the start was being
                # written, and grpc.aio hid its answer: no body byte has been read yet, so the
                # start goes again on a call of its own, once, for the node's own answer.
                call.cancel()
                call = self.node.call_stream(self.token)
                accepted = await _accepted(call, start)
            limit = min(self.config.max_work_body_bytes, accepted.accepted.max_body_bytes)
            if request.get(_EXPECTING):
                await _continue(request)
            refused = await self._send_body(call, limit)
            if refused is not None:
                call.cancel()
                return refused
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            response = _rpc_error(request, exc)
            if not request.content.at_eof():
                response.force_close()  # the rest of the body is never read
            return response
        except BaseException:
            call.cancel()
            raise
        return await self._stream_out(first.head, call)

    async def _send_body(self, call: Any, limit: int) -> web.Response | None:
        """The DApp's body to the node in BODY_CHUNK_BYTES messages; the refusal when it is
        too large, too slow or malformed. A write the node refused (it ended the call) stops
        the body: the call's own error follows when its answer is read."""
        try:
            async for data in _body_slices(self.request, limit):
                await call.write(work_pb.CallStreamRequest(body=http_pb2.BodyChunk(data=data)))
            await call.write(work_pb.CallStreamRequest(body=http_pb2.BodyChunk(end_of_body=True)))
            await call.done_writing()
        except _BodyRefusedError as refused:
            return refused.answer(self.request_id)
        except asyncio.InvalidStateError:
            pass
        return None

    def _answer(self, head: http_pb2.HttpResponseHead, body: bytes) -> web.Response:
        exact = self._exact(head)
        if isinstance(exact, web.Response):
            return exact
        response = ProxiedResponse(status=head.status_code, body=body)
        response.exact = exact
        return response

    def _exact(self, head: http_pb2.HttpResponseHead) -> list[tuple[str, str]] | web.Response:
        exact = _response_headers([(h.name, h.value) for h in head.headers], self.request_id)
        if exact is None:
            log_event(_log, "dservice_header_not_utf8", logging.WARNING, dservice=self.dservice)
            return error_response(
                grpc.StatusCode.UNKNOWN,
                "the DService answered a header value that is not UTF-8, which this gateway "
                "cannot write (gRPC clients receive it as sent)",
                reason="DSERVICE_FAILED",
                request_id=self.request_id,
            )
        return exact

    async def _stream_out(self, head: http_pb2.HttpResponseHead, call: Any) -> web.StreamResponse:
        """An answer whose body comes as ``call``'s messages: the head goes out at once, each
        slice as it comes (``Content-Length`` kept when the DService sent one, else chunked).
        A call that fails after the head ends the connection without the answer's end (no
        last chunk, or fewer bytes than announced): the DApp's client sees it incomplete."""
        try:
            exact = self._exact(head)
            if isinstance(exact, web.Response):
                return exact
            response = ProxiedStream(status=head.status_code)
            response.exact = exact
            length = next((v for n, v in exact if n.lower() == "content-length"), None)
            if length is not None and length.isdigit():
                response.content_length = int(length)
            elif self.request.version >= (1, 1):
                response.enable_chunked_encoding()
            else:
                response.force_close()  # HTTP/1.0: the end of the body is the connection's
            await response.prepare(self.request)
            try:
                while (message := await call.read()) is not grpc.aio.EOF:
                    if message.WhichOneof("kind") == "body":
                        await response.write(message.body.data)
            except grpc.aio.AioRpcError as exc:
                log_event(
                    _log,
                    "answer_cut",
                    logging.WARNING,
                    dservice=self.dservice,
                    request_id=self.request_id,
                    reason=rpc_details(exc)[0] or exc.code().name,
                )
                _cut(self.request)
                return response
            await response.write_eof()
            return response
        finally:
            call.cancel()  # nothing once it ended; a DApp gone mid-answer stops the work


def _cut(request: web.Request) -> None:
    """Ends the DApp's connection at once, without the end of the answer."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _body_slices(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body in slices of about BODY_CHUNK_BYTES as the DApp sends it, cut as
    soon as it passes ``limit``; given up when no byte comes for ``body_timeout_s``."""
    timeout_s = request.app[CONFIG_KEY].body_timeout_s
    held: list[bytes] = []
    held_size = 0
    size = 0
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await request.content.readany()
        except TimeoutError:
            raise _BodyRefusedError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no request body bytes for {timeout_s} s",
                "BODY_TIMEOUT",
                http_status=408,
            ) from None
        except HttpProcessingError:  # broken chunked framing and the like: the DApp's bytes
            raise _BodyRefusedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed request body framing",
                "BAD_HTTP_REQUEST",
            ) from None
        size += len(chunk)
        if size > limit:
            raise _too_large_error(limit)
        if chunk:
            held.append(chunk)
            held_size += len(chunk)
        if held and (not chunk or held_size >= BODY_CHUNK_BYTES):
            yield b"".join(held)
            held, held_size = [], 0
        if not chunk:
            return


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``."""
    return web.json_response({"status": "serving"}, headers={"Server": SERVER_NAME})


async def openapi_document(request: web.Request) -> web.Response:
    """``GET /v1/openapi.json``: the OpenAPI 3.1 document of this interface."""
    return web.json_response(openapi.document(), headers={"Server": SERVER_NAME})


def make_app(config: GatewayConfig, node: NodeClient) -> web.Application:
    """Builds the gateway application around a node client."""
    app = web.Application(
        middlewares=[cors.preflight(config), _errors], client_max_size=config.max_work_body_bytes
    )
    app.on_response_prepare.append(_restore_headers)
    if config.cors_allowed_origins:  # without, the hook would never add a header
        app.on_response_prepare.append(cors.response_headers(config))  # after the DService's
    app[CONFIG_KEY] = config
    app[NODE_KEY] = node
    control = _expect_within(config.max_control_body_bytes)
    work = _expect_within(config.max_work_body_bytes, deferred=True)
    add = app.router.add_route
    add("POST", "/v1/sessions", create_session, expect_handler=control)
    add("DELETE", "/v1/sessions", revoke_session, expect_handler=control)
    get = app.router.add_get  # and HEAD
    get("/v1/ledger/rows", list_ledger_rows, expect_handler=control)
    get("/v1/ledger/requests/{request_id}", ledger_rows_of_request, expect_handler=control)
    add("*", "/v1/dservices/{name}/{path:.*}", call_dservice, expect_handler=work)
    add("*", "/v1/dservices/{name}", call_dservice, expect_handler=work)
    get("/v1/openapi.json", openapi_document, expect_handler=control)
    get("/healthz", healthz, expect_handler=control)
    return app
