"""Re-checking what Central's earlier answers admitted, whenever the set of Central links
changes: each connected miner and each account holding a session issued here is looked up
again (by id, no secret), and whatever Central no longer vouches for is dropped.

Central unreachable is not a verdict: admissions stay until a link returns, and the check
runs again then (a link coming back is a change too).
"""

from __future__ import annotations

import logging

from cgn_common.errors import CgnError, NotFoundError, UnavailableError
from cgn_common.logs import log_event
from cgn_common.tasks import Supervisor
from cgn_common.types import AccountKind
from cgn_node.broker import Broker
from cgn_node.central_client import CentralClient
from cgn_node.sessions import SessionIssuer

_log = logging.getLogger(__name__)

SESSION_KINDS = (AccountKind.ENTERPRISE, AccountKind.END_USER)


class StandingChecker:
    """Runs one re-check at a time; a change during a check queues exactly one more."""

    def __init__(
        self,
        central: CentralClient,
        broker: Broker,
        issuer: SessionIssuer,
        supervisor: Supervisor,
    ) -> None:
        self._central = central
        self._broker = broker
        self._issuer = issuer
        self._supervisor = supervisor
        self._running = False
        self._again = False
        self.checks = 0

    def schedule(self) -> None:
        """Asks for a re-check (call on every change of the Central links)."""
        if self._running:
            self._again = True
            return
        self._running = True
        self._supervisor.spawn("standing-recheck", self._run())

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                await self.check_once()
                if not self._again:
                    return
        finally:
            self._running = False

    async def _vouched(self, account_id: str) -> bool | None:
        """True/False per Central; None when Central cannot say now."""
        try:
            info = await self._central.account_standing(account_id)
        except NotFoundError:
            return False
        except UnavailableError:
            return None
        except CgnError as exc:
            log_event(_log, "standing_check_failed", logging.WARNING, error=exc.message)
            return None
        return not info.banned

    async def check_once(self) -> None:
        """Re-checks every miner and session account once."""
        self.checks += 1
        dropped = 0
        for miner in self._broker.miners():
            verdict = await self._vouched(miner.miner_id)
            if verdict is None:
                return
            if not verdict:
                miner.close("Central no longer vouches for this miner")
                dropped += 1
        for account_id in self._issuer.accounts_with_sessions():
            verdict = await self._vouched(account_id)
            if verdict is None:
                return
            if not verdict:
                self._issuer.revoke_account(account_id)
                dropped += 1
        log_event(_log, "standing_rechecked", dropped=dropped)
