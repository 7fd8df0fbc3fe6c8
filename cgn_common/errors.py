"""The root of every CGN error. Each class knows its gRPC status code."""

from __future__ import annotations

import grpc


class CgnError(Exception):
    """Base class of every error the CGN raises on purpose.

    ``message`` is safe to show to the caller: it never holds secrets or internals.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(CgnError, ValueError):
    """The caller sent something malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class UnauthenticatedError(CgnError):
    """Missing, wrong or expired credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(CgnError):
    """Authenticated, but not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFoundError(CgnError, LookupError):
    """The named thing does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(CgnError):
    """The thing to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(CgnError):
    """The system is not in a state to do this."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(CgnError):
    """Over a limit: a queue past its danger threshold, a body too large."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(CgnError, ConnectionError):
    """A dependency cannot be reached now; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(CgnError, TimeoutError):
    """The work did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnimplementedError(CgnError, NotImplementedError):
    """This version does not do that."""

    code = grpc.StatusCode.UNIMPLEMENTED


_BY_CODE: dict[grpc.StatusCode, type[CgnError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        UnauthenticatedError,
        PermissionDeniedError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        UnimplementedError,
    )
}


def error_for_code(code: grpc.StatusCode, message: str) -> CgnError:
    """Returns the CgnError subclass instance that stands for a gRPC status code."""
    return _BY_CODE.get(code, CgnError)(message)
