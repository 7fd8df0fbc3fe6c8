"""The node's ledger recorder: each finished work unit becomes one ledger row, priced and
written off the response's critical path (``settlement.ledger_writer``; docs/ledger.md).

What pricing needs that the node does not know yet is stated here, not guessed silently:

- Pseudonyms come from Central (``GetAccountStanding``), looked up once per account and
  cached: the enterprise's, the miner's (the contributor) and the node's own (the operator).
  The built-in DServices have no registered developer: their developer is the node operator.
- Payout addresses and charity choices come with Central's answers (``AccountInfo``): each
  beneficiary's chosen share goes to its charity's column; the addresses go into the private
  ``eth_addresses`` column.
- Miners report no calibrated benchmark yet: every miner is priced as the reference hardware
  (premium 1.0), at the standard service level.
- Failed work is recorded with a fee of 0 (SPEC 15); abandoned work is priced on the usage
  its miner reported up to the cancel (``cgn_node/_rpc.py``), or at 0 when none came.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from cgn_common.errors import CgnError
from cgn_common.logs import log_event
from cgn_common.types import AccountKind
from cgn_node.central_client import AccountInfo, CentralClient
from cgn_node.recorder import FinishedWork
from settlement.hardware import MinerBenchmark, ReferenceHardware
from settlement.ledger import LedgerEntry, Outcome, custom_fields, private_fields
from settlement.ledger_writer import LedgerWriter
from settlement.pricing import MeteredUsage, PricingTables, price_work
from settlement.rates import FreshRates
from settlement.resources import day_number
from settlement.rowhash import (
    encode_addresses,
    encode_headers,
    new_salt,
    redact_headers,
    request_line,
)
from settlement.service_levels import STANDARD, default_price_list
from settlement.split import CharityChoices, split_fee

_log = logging.getLogger(__name__)

_EMPTY_PAIRS = b""
_REFERENCE = ReferenceHardware()


#: How long what Central said about an account (pseudonym, payout address, charity) is reused.
PARTY_TTL_S = 60.0

_NOBODY = AccountInfo("", AccountKind.ENTERPRISE, (), "", None)


class Pseudonyms:
    """Account id -> what the ledger needs of it (pseudonym, payout address, charity choice),
    asked of Central and kept for :data:`PARTY_TTL_S`, so a changed charity applies within a
    minute."""

    def __init__(self, central: CentralClient) -> None:
        self._central = central
        self._known: dict[str, tuple[float, AccountInfo]] = {}

    async def party(self, account_id: str) -> AccountInfo:
        """What Central says of ``account_id`` (an empty stand-in for no account)."""
        if not account_id:
            return _NOBODY
        known = self._known.get(account_id)
        now = time.monotonic()
        if known is None or now - known[0] > PARTY_TTL_S:
            if len(self._known) > 100_000:
                self._known.clear()
            known = (now, await self._central.account_standing(account_id))
            self._known[account_id] = known
        return known[1]

    async def of(self, account_id: str) -> str:
        """The pseudonym of ``account_id`` ("" for no account)."""
        return (await self.party(account_id)).pseudonym


def _charity(party: AccountInfo, share_ppm: int) -> str:
    """The pseudonym of the charity ``party`` gives ``share_ppm`` to ("" when it gives none)."""
    return party.charity_pseudonym if share_ppm else ""


def _address(hex_address: str) -> bytes | None:
    """20 bytes of a 0x-prefixed hex address; None when there is none (or it is malformed)."""
    if len(hex_address) != 42 or not hex_address.startswith("0x"):
        return None
    try:
        return bytes.fromhex(hex_address[2:])
    except ValueError:
        return None


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
            operator = await self._pseudonyms.party(self._node_id)
            enterprise = await self._pseudonyms.party(work.account_id)
            contributor = await self._pseudonyms.party(work.miner_id)
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
            operator = enterprise = contributor = _NOBODY
        # The built-in DServices' developer is the node operator (docs/ledger.md).
        developer = operator
        charity = CharityChoices(
            contributor_ppm=contributor.charity_share_ppm if contributor.charity_pseudonym else 0,
            developer_ppm=developer.charity_share_ppm if developer.charity_pseudonym else 0,
            operator_ppm=operator.charity_share_ppm if operator.charity_pseudonym else 0,
        )
        addresses = {
            role: address
            for role, party in (
                ("enterprise", enterprise.ethereum_address),
                ("contributor", contributor.ethereum_address),
                ("developer", developer.ethereum_address),
                ("node_operator", operator.ethereum_address),
                ("contributor_charity", contributor.charity_ethereum_address),
                ("developer_charity", developer.charity_ethereum_address),
                ("operator_charity", operator.charity_ethereum_address),
            )
            if (address := _address(party)) is not None
        }
        private = private_fields(
            {
                "salt": new_salt(),
                "request_id": work.request_id,
                "dservice": work.dservice,
                "request_line": request_line(work.method, work.path, work.query),
                "request_headers": encode_headers(redact_headers(work.headers)),
                "dservice_fields": _EMPTY_PAIRS,
                "eth_addresses": encode_addresses(addresses),
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
                enterprise=enterprise.pseudonym,
                end_user="",
                contributor=contributor.pseudonym,
                developer=developer.pseudonym,
                node_operator=operator.pseudonym,
                contributor_charity=_charity(contributor, charity.contributor_ppm),
                developer_charity=_charity(developer, charity.developer_ppm),
                operator_charity=_charity(operator, charity.operator_ppm),
                currency=self._currency,
                fee_fiat_nano=fee_fiat,
                fee_atto=fee_atto,
                payouts=split_fee(fee_atto, charity=charity),
                rate_nano_per_coin=rate.nano_per_token,
                private_fields=private,
                custom_fields=custom_fields({}, new_salt()),
            )
        )
