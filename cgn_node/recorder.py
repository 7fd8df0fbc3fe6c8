"""Where a finished work unit is recorded: the node's ledger (``cgn_node/ledger_recorder.py``)
in production; :class:`LogRecorder`, one structured log line, where a test needs no ledger."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from cgn_common.logs import log_event
from cgn_common.types import Tier

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishedWork:
    """Everything the node knows about a finished work unit when it writes the row."""

    work_id: str
    account_id: str
    dservice: str
    miner_id: str
    tier: Tier
    status_code: int
    attempts: int
    total_time_us: int
    execution_time_us: int
    cpu_time_us: int
    bytes_in: int
    bytes_out: int
    request_id: str = ""
    #: The request as the DApp sent it (credential headers are redacted before storing).
    method: str = ""
    path: str = ""
    query: str = ""
    headers: tuple[tuple[str, bytes], ...] = ()
    #: How the unit ended: "delivered", "abandoned" (the caller went away) or "failed".
    outcome: str = "delivered"

    @property
    def network_latency_us(self) -> int:
        """Total time minus the miner's reported execution time (SPEC section 4, step 6)."""
        return max(0, self.total_time_us - self.execution_time_us)


class WorkRecorder(Protocol):
    """Records finished work units, off the response's critical path: the node calls it once
    the call has ended (delivered, or abandoned by its caller)."""

    async def record(self, work: FinishedWork) -> None:
        """Records ``work`` (an exception is logged with its traceback by the caller's
        supervisor)."""


class LogRecorder:
    """Logs each finished work unit at DEBUG (one line per request would flood INFO logs); for
    tests that exercise the work path without a ledger."""

    async def record(self, work: FinishedWork) -> None:
        """Writes one ``work_finished`` log line."""
        if not _log.isEnabledFor(logging.DEBUG):
            return
        log_event(
            _log,
            "work_finished",
            logging.DEBUG,
            work_id=work.work_id,
            request_id=work.request_id,
            account_id=work.account_id,
            dservice=work.dservice,
            miner_id=work.miner_id,
            tier=int(work.tier),
            status=work.status_code,
            attempts=work.attempts,
            total_us=work.total_time_us,
            execution_us=work.execution_time_us,
            latency_us=work.network_latency_us,
        )
