"""The gateway's OpenAPI 3.1 document, served at ``GET /v1/openapi.json`` and committed as
``docs/openapi.json`` (``tests/gateway/test_openapi.py`` fails when the two differ).

Regenerate the committed copy after changing the interface::

    .venv/bin/python -m gateway.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc

from gateway.errors import HTTP_STATUS, HTTP_STATUS_BY_REASON

#: Every error status the CGN itself answers, with what it means here (docs/errors.md has
#: every reason behind them).
ERROR_STATUSES: dict[int, str] = {
    400: "Bad input: malformed HTTP, JSON or parameters (INVALID_ARGUMENT, BAD_JSON, "
    "BAD_HTTP_REQUEST, ...)",
    401: "No session token, or an invalid, expired or revoked one; a wrong API key "
    "(UNAUTHENTICATED, with WWW-Authenticate)",
    403: "Not allowed (PERMISSION_DENIED); a refused CORS preflight (CORS_REFUSED)",
    404: "No such route, DService or ledger row (NOT_FOUND, NO_ROUTE, UNKNOWN_DSERVICE, ...)",
    408: "The request body stopped arriving for body_timeout_s (BODY_TIMEOUT)",
    409: "ALREADY_EXISTS or ABORTED",
    413: "The body is over the limit; refused before it is read when Content-Length shows it "
    "(BODY_TOO_LARGE; the connection closes)",
    417: "An Expect header other than 100-continue (EXPECTATION_FAILED)",
    429: "A per-client limit: in-flight requests or failed logins (with Retry-After)",
    431: "Too many header lines, or a line over max_header_bytes (HEADERS_TOO_LARGE)",
    499: "The call was cancelled (CANCELLED)",
    500: "A bug in the CGN (INTERNAL, UNKNOWN, DATA_LOSS); logged, no internals in the message",
    501: "Not supported, e.g. a protocol upgrade (UNIMPLEMENTED, UPGRADE_NOT_SUPPORTED)",
    502: "The DService answered badly or failed (DSERVICE_FAILED), or the node refused the "
    "gateway's certificate (CERTIFICATE_REVOKED)",
    503: "Overload or a dependency down: node, Central, no eligible miner (with Retry-After)",
    504: "The request's deadline passed, or every dispatch failed (DEADLINE_EXCEEDED, "
    "RETRY_BUDGET_EXHAUSTED)",
}

_JSON = "application/json"


def _error_response(status: int) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-CGN-Error": {"$ref": "#/components/headers/X-CGN-Error"}}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    return {
        "description": ERROR_STATUSES[status],
        "headers": headers,
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in sorted(statuses)}


#: Errors any request may get before a route runs (parser, header limits, Expect).
_ALWAYS = (400, 403, 417, 431, 500)
#: Every status a call through the node can end in (any gRPC code the node answers).
_NODE = tuple(sorted({*HTTP_STATUS.values(), *HTTP_STATUS_BY_REASON.values()} - {200}))


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _operation(
    summary: str, ok: dict[str, Any], errors: tuple[int, ...], **extra: Any
) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": ok, **_errors(*errors)}, **extra}


def _dservice_operations() -> dict[str, Any]:
    operation = {
        "summary": "Call a DService: any method, path, query, headers and body, passed on "
        "byte for byte (docs/dservices.md, Proxying)",
        "security": [{"session": []}, {"sessionHeader": []}],
        "parameters": [
            {"$ref": "#/components/parameters/name"},
            {"$ref": "#/components/parameters/X-Request-Id"},
            {"$ref": "#/components/parameters/X-CGN-Timeout-Ms"},
        ],
        "responses": {
            "default": {
                "description": "The DService's own answer: its status, headers and body "
                "(without X-CGN-Error)",
                "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
            },
            **_errors(*_ALWAYS, *_NODE, 408, 413),
        },
    }
    methods = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
    return {m: {**operation, "operationId": f"callDService_{m}"} for m in methods}


def _dservice_path_item() -> dict[str, Any]:
    item = _dservice_operations()
    for method, operation in item.items():
        item[method] = {
            **operation,
            "operationId": f"callDServicePath_{method}",
            "parameters": [
                *operation["parameters"],
                {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "description": "The path below the DService's name, passed on as written "
                    "(it may contain '/'; empty calls '/')",
                    "schema": {"type": "string"},
                },
            ],
        }
    return item


def _components() -> dict[str, Any]:
    string = {"type": "string"}
    return {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message", "reason"],
                        "properties": {
                            "code": {
                                "description": "The gRPC status name",
                                "type": "string",
                                "enum": [c.name for c in grpc.StatusCode],
                            },
                            "message": {
                                "description": "What went wrong, for people; no internals",
                                "type": "string",
                            },
                            "reason": {
                                "description": "The stable cause (google.rpc.ErrorInfo "
                                "reason, docs/errors.md); the code's name when none applies",
                                "type": "string",
                                "pattern": "^[A-Z0-9_]+$",
                            },
                        },
                    }
                },
            },
            "SessionRequest": {
                "type": "object",
                "required": ["account_id", "api_key"],
                "properties": {"account_id": string, "api_key": string},
            },
            "Session": {
                "type": "object",
                "required": ["token", "expires_at"],
                "properties": {"token": string, "expires_at": {**string, "format": "date-time"}},
            },
            "LedgerRows": {
                "description": "cgn.ledger.v1 ListRowsResponse / ListRowsByRequestResponse in "
                "proto3 JSON (field names as in the protos)",
                "type": "object",
            },
        },
        "responses": {f"E{s}": _error_response(s) for s in ERROR_STATUSES},
        "headers": {
            "X-CGN-Error": {
                "description": "Present (1) on every error the CGN made, absent on a "
                "DService's own answers",
                "schema": {"type": "string", "const": "1"},
            },
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}},
            "WWW-Authenticate": {"description": 'Bearer realm="cgn"', "schema": string},
            "X-Request-Id": {"description": "The request's id", "schema": string},
        },
        "parameters": {
            "name": {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "The DService's name, matched as written",
                "schema": string,
            },
            "X-Request-Id": {
                "name": "X-Request-Id",
                "in": "header",
                "description": "Your request id (1-128 of A-Z a-z 0-9 . _ -); else one is made",
                "schema": {**string, "pattern": "^[A-Za-z0-9._-]{1,128}$"},
            },
            "X-CGN-Timeout-Ms": {
                "name": "X-CGN-Timeout-Ms",
                "in": "header",
                "description": "A shorter deadline for this call, in milliseconds",
                "schema": {"type": "integer", "minimum": 1},
            },
        },
        "securitySchemes": {
            "session": {
                "type": "http",
                "scheme": "bearer",
                "description": "The token from POST /v1/sessions (scheme case-insensitive)",
            },
            "sessionHeader": {
                "type": "apiKey",
                "in": "header",
                "name": "X-CGN-Session",
                "description": "The token, leaving Authorization to the DService",
            },
        },
    }


def _with_head(paths: dict[str, Any]) -> dict[str, Any]:
    """Every GET route answers HEAD too (aiohttp's ``add_get``): the same answer, no body."""
    for item in paths.values():
        if "get" in item and "head" not in item:
            get = item["get"]
            item["head"] = {
                **get,
                "summary": f"{get['summary']} (headers only)",
                "operationId": f"{get['operationId']}Head",
            }
    return paths


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway's HTTP interface."""
    ledger_rows = {"$ref": "#/components/schemas/LedgerRows"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CGN REST gateway",
            "version": "1",
            "description": "DApps open a session with an API key, then call DServices with "
            "plain HTTP. Every error the CGN makes is JSON (components/schemas/Error) with "
            "X-CGN-Error: 1. A known path with another method is 405 with Allow (reason "
            "METHOD_NOT_ALLOWED); an unknown path is 404 (NO_ROUTE). CORS preflights are "
            "answered without a token (docs/gateway.md).",
        },
        "paths": _with_head(
            {
                "/v1/sessions": {
                    "post": _operation(
                        "Open a session with an account id and API key",
                        _ok("The session", {"$ref": "#/components/schemas/Session"}),
                        (*_ALWAYS, *_NODE, 408, 413),
                        operationId="createSession",
                        requestBody={
                            "required": True,
                            "content": {
                                _JSON: {"schema": {"$ref": "#/components/schemas/SessionRequest"}}
                            },
                        },
                    ),
                    "delete": _operation(
                        "End the caller's session on every node",
                        _ok(
                            "Revoked",
                            {
                                "type": "object",
                                "required": ["revoked"],
                                "properties": {"revoked": {"const": True}},
                            },
                        ),
                        (*_ALWAYS, *_NODE),
                        operationId="revokeSession",
                        security=[{"session": []}],
                    ),
                },
                "/v1/dservices/{name}": _dservice_operations(),
                "/v1/dservices/{name}/{path}": _dservice_path_item(),
                "/v1/ledger/rows": {
                    "get": _operation(
                        "The node's public ledger rows, a page at a time (no token)",
                        _ok("A page of rows", ledger_rows),
                        (*_ALWAYS, *_NODE),
                        operationId="listLedgerRows",
                        parameters=[
                            {"name": n, "in": "query", "schema": s}
                            for n, s in (
                                ("start", {"type": "string", "format": "date-time"}),
                                ("end", {"type": "string", "format": "date-time"}),
                                ("enterprise", {"type": "string"}),
                                ("page_size", {"type": "integer", "minimum": 0}),
                                ("page_token", {"type": "string"}),
                            )
                        ],
                    )
                },
                "/v1/ledger/requests/{request_id}": {
                    "get": _operation(
                        "The caller's own ledger rows of one request, private columns included",
                        _ok("The rows", ledger_rows),
                        (*_ALWAYS, *_NODE),
                        operationId="ledgerRowsOfRequest",
                        security=[{"session": []}],
                        parameters=[
                            {
                                "name": "request_id",
                                "in": "path",
                                "required": True,
                                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
                            }
                        ],
                    )
                },
                "/v1/openapi.json": {
                    "get": _operation(
                        "This document",
                        _ok("OpenAPI 3.1", {"type": "object"}),
                        _ALWAYS,
                        operationId="openapi",
                    )
                },
                "/healthz": {
                    "get": _operation(
                        "200 while the gateway process runs (does not check the node)",
                        _ok(
                            "Serving",
                            {"type": "object", "properties": {"status": {"const": "serving"}}},
                        ),
                        _ALWAYS,
                        operationId="healthz",
                    )
                },
            }
        ),
        "components": _components(),
    }


def rendered() -> str:
    """The document as committed: sorted keys, two-space indent, a final newline."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(rendered())
