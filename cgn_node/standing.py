"""Catching up with Central whenever the set of Central links changes.

Directives on a live link carry bans and revocations at once; what a node misses while it is
unlinked or down, it learns here, on every new link:

1. **Session revocations**: everything Central recorded within a lookback window (the token
   lifetime on the first link, the time since the last complete sync afterwards, plus a
   margin for clock skew) is merged into the :class:`RevocationView`, which only then counts
   as current again.
2. **Miners**: each connected miner is looked up again (by id, no secret), and one Central no
   longer vouches for is dropped.

Central unreachable is not a verdict: the sync is retried with backoff while a link is up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cgn_common.errors import CgnError, NotFoundError, UnavailableError
from cgn_common.logs import log_event
from cgn_common.tasks import Backoff, Supervisor
from cgn_common.types import AccountKind
from cgn_node.broker import Broker
from cgn_node.central_client import CentralClient
from cgn_node.sessions import RevocationView

_log = logging.getLogger(__name__)

SESSION_KINDS = (AccountKind.ENTERPRISE, AccountKind.END_USER)

#: Added to every lookback: covers clock skew between node and Central and a revocation
#: committed while the previous sync's answer was being read.
LOOKBACK_MARGIN_S = 60.0


class StandingChecker:
    """Runs one catch-up at a time; a change during one queues exactly one more."""

    def __init__(
        self,
        central: CentralClient,
        broker: Broker,
        revocations: RevocationView,
        session_ttl_s: float,
        supervisor: Supervisor,
        connected: Callable[[], bool],
    ) -> None:
        self._central = central
        self._broker = broker
        self._revocations = revocations
        self._session_ttl_s = session_ttl_s
        self._supervisor = supervisor
        self._connected = connected
        self._running = False
        self._again = False
        self._backoff = Backoff(0.2, 5.0)
        #: Monotonic start of the last sync that left the view current.
        self._last_sync: float | None = None
        self.checks = 0
        self.syncs = 0

    def links_changed(self) -> None:
        """Call on every change of the Central links."""
        if not self._connected():
            self._revocations.unlinked()
            return
        self.schedule()

    def schedule(self) -> None:
        """Asks for a catch-up."""
        if self._running:
            self._again = True
            return
        self._running = True
        self._supervisor.spawn("standing-recheck", self._run())

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                if not await self.check_once() and self._connected():
                    await asyncio.sleep(self._backoff.next())
                    self._again = True
                if not self._again:
                    return
        finally:
            self._running = False

    async def _sync_revocations(self) -> bool:
        started = self._revocations.sync_started()
        began = time.monotonic()
        if self._last_sync is None:
            lookback = self._session_ttl_s + LOOKBACK_MARGIN_S
        else:
            lookback = began - self._last_sync + LOOKBACK_MARGIN_S
        try:
            found = await self._central.session_revocations(lookback)
        except CgnError as exc:
            log_event(_log, "revocation_sync_failed", logging.WARNING, error=exc.message)
            return False
        for account_id, epoch in found.accounts:
            self._revocations.account_revoked(account_id, epoch)
        for session_id, expires_at in found.sessions:
            self._revocations.session_revoked(session_id, expires_at)
        current = self._revocations.synced(started)
        if current:
            self._last_sync = began
            self.syncs += 1
            self._backoff.reset()
        log_event(
            _log,
            "revocations_synced",
            accounts=len(found.accounts),
            sessions=len(found.sessions),
            lookback_s=round(lookback, 1),
            current=current,
        )
        return current

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

    async def check_once(self) -> bool:
        """Syncs revocations and re-checks every miner once; False when Central could not
        answer everything."""
        self.checks += 1
        if not await self._sync_revocations():
            return False
        dropped = 0
        for miner in self._broker.miners():
            verdict = await self._vouched(miner.miner_id)
            if verdict is None:
                return False
            if not verdict:
                miner.close("Central no longer vouches for this miner")
                dropped += 1
        log_event(_log, "standing_rechecked", dropped=dropped)
        return True
