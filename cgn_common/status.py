"""CgnError <-> google.rpc.Status, with the error's reason in a ``google.rpc.ErrorInfo``."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from cgn_common.errors import CgnError, error_for_code

#: The ErrorInfo domain of reasons the CGN sets.
ERROR_DOMAIN = "cgn"
#: The details grpc.aio's client gives a write that failed because the call had already ended
#: (grpc/grpc#36066, not fixed in a release yet): INTERNAL with these details replaces the
#: status the server had sent.
_WRITE_AFTER_END_DETAILS = "Internal error from Core"

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_proto(error: CgnError) -> status_pb2.Status:
    """The google.rpc.Status that carries ``error``: always an ErrorInfo with its stable
    reason, and a RetryInfo when retrying later may succeed."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.stable_reason, domain=ERROR_DOMAIN))
    status.details.append(info)
    if error.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(error.retry_after_s * 1000))
        detail = any_pb2.Any()
        detail.Pack(retry)
        status.details.append(detail)
    return status


def reason_of(status: status_pb2.Status | None) -> str:
    """The CGN reason in ``status``'s details, or ''."""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return str(info.reason)
    return ""


def retry_after_of(status: status_pb2.Status | None) -> float | None:
    """The RetryInfo delay in ``status``'s details, in seconds, or None."""
    for detail in status.details if status is not None else ():
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return float(retry.retry_delay.ToMilliseconds()) / 1000
    return None


def error_from_status(status: status_pb2.Status) -> CgnError:
    """The CgnError a google.rpc.Status stands for."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return error_for_code(code, status.message, reason_of(status))


def rpc_details(exc: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """The CGN reason ('' if none) and the retry delay (None if none) a failed call carries."""
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # a status detail inconsistent with the call's code or message
        return "", None
    return reason_of(status), retry_after_of(status)


def write_hid_the_status(exc: grpc.aio.AioRpcError) -> bool:
    """Whether ``exc`` is grpc.aio's report of a client write that failed because the server
    had already ended the call (e.g. refused it at its start): the client then sees INTERNAL
    instead of the server's own status, which is lost (grpc/grpc#36066). A write racing a
    refusal gets it about once in 400 calls on a busy machine."""
    return exc.code() is grpc.StatusCode.INTERNAL and exc.details() == _WRITE_AFTER_END_DETAILS


def error_from_rpc(exc: grpc.aio.AioRpcError) -> CgnError:
    """The CgnError a failed call stands for; the message is the server's, already safe."""
    return error_for_code(exc.code(), exc.details() or exc.code().name, rpc_details(exc)[0])


def grpc_status(error: CgnError) -> Any:
    """The grpc.Status to abort a call with."""
    return rpc_status.to_status(status_proto(error))
