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

#: Marks an error made by the CGN, so a DService's own 404 stays distinguishable.
CGN_ERROR_HEADER = "X-CGN-Error"

#: The Server header on answers the gateway makes itself (no versions leaked).
SERVER_NAME = "cgn-gateway"


def error_response(
    code: grpc.StatusCode, message: str, *, http_status: int | None = None, retry_after_s: int = 1
) -> web.Response:
    """The JSON error answer for ``code``."""
    status = http_status or HTTP_STATUS.get(code, 500)
    headers = {CGN_ERROR_HEADER: "1", "Server": SERVER_NAME}
    if code is grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="cgn"'
    if status == 503:
        headers["Retry-After"] = str(retry_after_s)
    return web.json_response(
        {"error": {"code": code.name, "message": message}}, status=status, headers=headers
    )
