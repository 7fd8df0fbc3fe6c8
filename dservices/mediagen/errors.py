"""MediaGen's errors. Each knows the HTTP status and the short ``code`` it is answered with;
the message is safe to show to the caller (no internals, no tracebacks)."""

from __future__ import annotations

from typing import Any

import grpc

from cgn_common.errors import CgnError


class MediaGenError(CgnError):
    """The root of MediaGen's errors: answered as ``{"error": {"code", "message", ...}}``."""

    http_status = 400
    reason = "bad_request"
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details

    def to_json(self) -> dict[str, Any]:
        """The JSON body of the error answer."""
        return {"error": {"code": self.reason, "message": self.message, **self.details}}


class RequestError(MediaGenError, ValueError):
    """A malformed MRL: unknown or missing parameters, bad ``args``, two scripts."""


class ScriptSyntaxError(MediaGenError):
    """The script does not parse; ``details`` name the line, column and what was expected."""

    reason = "script_syntax_error"


class ScriptRuntimeError(MediaGenError):
    """The script failed while running (a type error, an unknown name, a bad argument)."""

    reason = "script_error"


class UnsupportedSchemeError(MediaGenError):
    """A URL whose scheme is not ``http`` or ``https``."""

    reason = "unsupported_scheme"


class AddressRefusedError(MediaGenError, PermissionError):
    """A URL whose host resolves to an address the policy refuses (loopback, private...)."""

    http_status = 403
    reason = "address_refused"
    code = grpc.StatusCode.PERMISSION_DENIED


class FetchError(MediaGenError, ConnectionError):
    """A script, source or output URL could not be fetched or written (unreachable, an HTTP
    error, too many redirects): 424 Failed Dependency."""

    http_status = 424
    reason = "fetch_failed"
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnsupportedMediaError(MediaGenError):
    """Fetched bytes that are not an image Pillow can read."""

    http_status = 415
    reason = "unsupported_media"


class LimitExceededError(MediaGenError):
    """A configured limit was exceeded. Sizes answer 413, steps and time 422; ``details``
    name the limit and its value."""

    http_status = 413
    reason = "limit_exceeded"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, limit: str, value: int | float, status: int = 413) -> None:
        super().__init__(message, limit=limit, value=value)
        self.http_status = status


class OverloadedError(MediaGenError):
    """Every worker is busy and the queue is full: 503, try again shortly."""

    http_status = 503
    reason = "overloaded"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NoOutputError(MediaGenError):
    """The script finished without calling ``save()``."""

    reason = "no_output"


def internal_error(message: str) -> MediaGenError:
    """A 500 answer for a failure that is MediaGen's own fault (logged where it happened)."""
    error = MediaGenError(message)
    error.http_status, error.reason = 500, "internal"
    return error
