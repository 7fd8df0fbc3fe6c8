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

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_proto(error: CgnError) -> status_pb2.Status:
    """The google.rpc.Status that carries ``error`` (its reason as ErrorInfo)."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
        status.details.append(detail)
    return status


def reason_of(status: status_pb2.Status | None) -> str:
    """The CGN reason in ``status``'s details, or ''."""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return str(info.reason)
    return ""


def error_from_status(status: status_pb2.Status) -> CgnError:
    """The CgnError a google.rpc.Status stands for."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return error_for_code(code, status.message, reason_of(status))


def rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    """The CGN reason a failed call carries, or ''."""
    try:
        return reason_of(rpc_status.from_call(exc))
    except ValueError:  # a status detail inconsistent with the call's code or message
        return ""


def error_from_rpc(exc: grpc.aio.AioRpcError) -> CgnError:
    """The CgnError a failed call stands for; the message is the server's, already safe."""
    return error_for_code(exc.code(), exc.details() or exc.code().name, rpc_reason(exc))


def grpc_status(error: CgnError) -> Any:
    """The grpc.Status to abort a call with."""
    return rpc_status.to_status(status_proto(error))
