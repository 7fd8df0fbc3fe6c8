"""How gRPC status codes become HTTP answers: one table, as grpc-gateway's
``HTTPStatusFromCode``, and one JSON error shape."""

from __future__ import annotations

import grpc
from aiohttp import web

#: gRPC status -> HTTP status. RESOURCE_EXHAUSTED is node overload here (503 + Retry-After);
#: a per-client rate limit answers 429 itself.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

#: Reasons (google.rpc.ErrorInfo) whose HTTP status differs from their code's.
HTTP_STATUS_BY_REASON: dict[str, int] = {
    # One account over its in-flight limit: a per-client limit, not node overload.
    "ACCOUNT_IN_FLIGHT_LIMIT": 429,
    # Too many failed logins from this address: a per-client limit.
    "LOGIN_THROTTLED": 429,
    # A body over the node's, the account's or the DService's limit.
    "BODY_TOO_LARGE": 413,
    # The DService answered badly or failed: the gateway's upstream is at fault.
    "DSERVICE_FAILED": 502,
    # Every dispatch failed and the retry budget ran out: the DApp waited in vain.
    "RETRY_BUDGET_EXHAUSTED": 504,
    # The node refused the gateway's own certificate: the gateway is at fault, not the DApp.
    "CERTIFICATE_REVOKED": 502,
}

#: Marks an error made by the CGN, so a DService's own 404 stays distinguishable.
CGN_ERROR_HEADER = "X-CGN-Error"

#: The request header that carries a DApp's session token when its ``Authorization`` is the
#: DService's own (docs/dservices.md, "Authentication").
SESSION_HEADER = "X-CGN-Session"

#: The Server header on every answer of the gateway, a DService's too (no versions leaked).
SERVER_NAME = "cgn-gateway"


def error_response(
    code: grpc.StatusCode,
    message: str,
    *,
    http_status: int | None = None,
    retry_after_s: int = 1,
    reason: str = "",
    request_id: str = "",
) -> web.Response:
    """The JSON error answer for ``code``; ``reason`` is the stable cause (the node's, or the
    gateway's own), the code's name when none is given (docs/errors.md)."""
    status = http_status or HTTP_STATUS_BY_REASON.get(reason) or HTTP_STATUS.get(code, 500)
    headers = {CGN_ERROR_HEADER: "1", "Server": SERVER_NAME}
    if request_id:
        headers["X-Request-Id"] = request_id
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="cgn"'
    if status in (429, 503):
        headers["Retry-After"] = str(retry_after_s)
    error: dict[str, str] = {"code": code.name, "message": message}
    error["reason"] = reason or code.name
    return web.json_response({"error": error}, status=status, headers=headers)
