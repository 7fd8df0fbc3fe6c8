"""The node's ledger recorder: each finished work unit becomes one ledger row, priced and
written off the response's critical path (``settlement.ledger_writer``; docs/ledger.md).

What pricing needs that the node does not know yet is stated here, not guessed silently:

- Pseudonyms come from Central (``GetAccountStanding``), looked up once per account and
  cached: the enterprise's, the miner's (the contributor) and the node's own (the operator).
  The built-in DServices have no registered developer: their developer is the node operator.
- No charity choices or payout addresses are in Central's answers yet: the charity columns are
  empty and every payout goes to its entity.
- Miners report no calibrated benchmark yet: every miner is priced as the reference hardware
  (premium 1.0), at the standard service level.
- Failed work is recorded with a fee of 0 (SPEC 15); work abandoned before the miner answered
  carries no usage report yet, so it is recorded as abandoned with a fee of 0 too.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from cgn_common.errors import CgnError
from cgn_common.logs import log_event
from cgn_node.central_client import CentralClient
from cgn_node.recorder import FinishedWork
from settlement.hardware import MinerBenchmark, ReferenceHardware
from settlement.ledger import LedgerEntry, Outcome, custom_fields, private_fields
from settlement.ledger_writer import LedgerWriter
from settlement.pricing import MeteredUsage, PricingTables, price_work
from settlement.rates import FreshRates
from settlement.resources import day_number
from settlement.rowhash import encode_headers, new_salt, redact_headers, request_line
from settlement.service_levels import STANDARD, default_price_list
from settlement.split import split_fee

_log = logging.getLogger(__name__)

_EMPTY_PAIRS = b""
_REFERENCE = ReferenceHardware()


class Pseudonyms:
    """Account id -> public pseudonym, asked of Central once per account."""

    def __init__(self, central: CentralClient) -> None:
        self._central = central
        self._known: dict[str, str] = {}

    def learn(self, account_id: str, pseudonym: str) -> None:
        """Remembers what a login answer already said."""
        if pseudonym:
            self._known[account_id] = pseudonym

    async def of(self, account_id: str) -> str:
        """The pseudonym of ``account_id`` ("" for no account)."""
        if not account_id:
            return ""
        known = self._known.get(account_id)
        if known is None:
            known = (await self._central.account_standing(account_id)).pseudonym
            self._known[account_id] = known
        return known


class LedgerRecorder:
    """Prices a finished unit and hands the row to the background writer."""

    def __init__(
        self,
        writer: LedgerWriter,
        pseudonyms: Pseudonyms,
        rates: FreshRates,
        node_id: str,
        currency: str,
    ) -> None:
        self.writer = writer
        self._pseudonyms = pseudonyms
        self._rates = rates
        self._node_id = node_id
        self._currency = currency
        self._tables = PricingTables(default_price_list(currency))
        self._reference_miner = MinerBenchmark(_REFERENCE.cpu_mips_per_thread, 0)

    async def record(self, work: FinishedWork) -> None:
        """Builds the unit's row and queues it (waits only while the writer's queue is full)."""
        finished_at = datetime.now(UTC)
        outcome = Outcome(work.outcome)
        rate = await self._rates.rate(self._currency)
        billable = outcome is not Outcome.FAILED and work.miner_id != ""
        if billable:
            price = price_work(
                MeteredUsage(
                    cpu_time_us=work.cpu_time_us,
                    bytes_in=work.bytes_in,
                    bytes_out=work.bytes_out,
                ),
                self._reference_miner,
                STANDARD,
                day_number(finished_at),
                rate,
                self._tables,
            )
            fee_fiat, fee_atto = price.fee_fiat.nano, price.fee_atto
        else:
            fee_fiat = fee_atto = 0
        try:
            operator = await self._pseudonyms.of(self._node_id)
            enterprise = await self._pseudonyms.of(work.account_id)
            contributor = await self._pseudonyms.of(work.miner_id)
        except CgnError as exc:
            # Central cannot say now (a node cut off for long refuses sessions anyway): the
            # row is written without pseudonyms rather than lost; its request id, in the
            # private columns, still ties it to its account.
            log_event(
                _log,
                "ledger_pseudonym_unknown",
                logging.WARNING,
                request_id=work.request_id,
                error=exc.message,
            )
            operator = enterprise = contributor = ""
        private = private_fields(
            {
                "salt": new_salt(),
                "request_id": work.request_id,
                "dservice": work.dservice,
                "request_line": request_line(work.method, work.path, work.query),
                "request_headers": encode_headers(redact_headers(work.headers)),
                "dservice_fields": _EMPTY_PAIRS,
                "eth_addresses": _EMPTY_PAIRS,
                "total_time_us": work.total_time_us,
                "execution_time_us": work.execution_time_us,
                "network_latency_us": work.network_latency_us,
                "cpu_time_us": work.cpu_time_us,
                "gpu_time_us": 0,
                "bytes_in": work.bytes_in,
                "bytes_out": work.bytes_out,
                "attempts": work.attempts,
                "status_code": work.status_code,
            }
        )
        await self.writer.record(
            LedgerEntry(
                finished_at=finished_at,
                outcome=outcome,
                request_id=work.request_id,
                enterprise=enterprise,
                end_user="",
                contributor=contributor,
                developer=operator,
                node_operator=operator,
                contributor_charity="",
                developer_charity="",
                operator_charity="",
                currency=self._currency,
                fee_fiat_nano=fee_fiat,
                fee_atto=fee_atto,
                payouts=split_fee(fee_atto),
                rate_nano_per_coin=rate.nano_per_token,
                private_fields=private,
                custom_fields=custom_fields({}, new_salt()),
            )
        )
