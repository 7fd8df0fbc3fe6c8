"""The root of every CGN error. Each class knows its gRPC status code."""

from __future__ import annotations

import grpc


class CgnError(Exception):
    """Base class of every error the CGN raises on purpose.

    ``message`` is safe to show to the caller: it never holds secrets or internals.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: A stable machine-readable cause, sent as ``google.rpc.ErrorInfo.reason`` in the status
    #: details (docs/errors.md lists them), so that e.g. the gateway can tell a per-account
    #: limit (429) from node overload (503). Empty: the code's name.
    reason: str = ""
    #: When retrying may succeed, after how long: sent as ``google.rpc.RetryInfo``, and what
    #: the gateway's ``Retry-After`` is made from. None: do not retry as it is.
    retry_after_s: float | None = None

    def __init__(
        self, message: str, *, reason: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    @property
    def stable_reason(self) -> str:
        """The ErrorInfo reason: the specific one, else the status code's name."""
        return self.reason or self.code.name


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
    retry_after_s: float | None = 1.0


class AccountLimitError(ResourceExhaustedError):
    """One account has too much work in flight (gateway: 429 + Retry-After)."""

    reason = "ACCOUNT_IN_FLIGHT_LIMIT"


class BodyTooLargeError(ResourceExhaustedError):
    """A request body over the node's, the account's or the DService's limit (gateway: 413);
    sending it again as it is cannot help."""

    reason = "BODY_TOO_LARGE"
    retry_after_s: float | None = None


class DServiceFailedError(CgnError):
    """The DService answered badly or failed; the miner is not to blame (gateway: 502)."""

    code = grpc.StatusCode.UNKNOWN
    reason = "DSERVICE_FAILED"


class AbortedError(CgnError):
    """The operation or stream was ended on purpose (e.g. a miner dropped)."""

    code = grpc.StatusCode.ABORTED


class UnavailableError(CgnError, ConnectionError):
    """A dependency cannot be reached now; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE
    retry_after_s = 1.0


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
        AbortedError,
    )
}


_BY_REASON: dict[str, type[CgnError]] = {
    cls.reason: cls for cls in (AccountLimitError, BodyTooLargeError, DServiceFailedError)
}


def error_for_code(code: grpc.StatusCode, message: str, reason: str = "") -> CgnError:
    """Returns the CgnError subclass instance that stands for a gRPC status code (and reason)."""
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, CgnError)
    error = cls(message, reason=reason)
    error.code = code
    return error
