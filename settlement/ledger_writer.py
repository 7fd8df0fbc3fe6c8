"""The node's background ledger writer: group commit off the response's critical path.

``record`` puts an entry in a bounded queue and returns at once; one task takes what is
queued (up to ``max_batch``), appends it in one transaction on a worker thread, and repeats.
While one batch commits, the next one gathers, so the commit rate adapts to the load: one
row per commit when idle, thousands under load. A full queue makes ``record`` wait (back
pressure) rather than drop a row.

Durability (docs/ledger.md): a row is *durable* once its batch committed (SQLite WAL with
``synchronous=NORMAL`` survives a crash of the process, not a power loss; PostgreSQL with
its defaults survives both). Rows queued or committing when the node dies are lost: at most
``max_queue`` rows, in practice the rows of the last few milliseconds. ``wait_durable``
waits for everything recorded so far.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cgn_common.logs import log_event
from cgn_common.tasks import Supervisor
from settlement.ledger import InvalidEntryError, LedgerEntry, LedgerStore, check_entry

_log = logging.getLogger(__name__)


class LedgerWriter:
    """Appends recorded entries to ``store`` in batches, under ``supervisor``."""

    def __init__(
        self,
        store: LedgerStore,
        supervisor: Supervisor,
        *,
        max_queue: int = 50_000,
        max_batch: int = 5_000,
    ) -> None:
        self.store = store
        self._queue: asyncio.Queue[LedgerEntry] = asyncio.Queue(max_queue)
        self._max_batch = max_batch
        self._recorded = 0
        self._durable = 0
        self._progress = asyncio.Condition()
        self.commits = 0
        #: Entries the ledger could not encode (logged at ERROR, left out).
        self.refused = 0
        #: Taken from the queue, not yet committed (kept across a restart of the loop).
        self._batch: list[LedgerEntry] = []
        self._task = supervisor.loop("ledger-writer", self._run)

    @property
    def pending(self) -> int:
        """Entries recorded but not yet durable (nor refused)."""
        return self._recorded - self._durable

    async def record(self, entry: LedgerEntry) -> None:
        """Queues ``entry``; waits only while the queue is full. An entry that can never be
        written (payouts not summing to the fee, a naive time) is refused here."""
        check_entry(entry)
        await self._queue.put(entry)
        self._recorded += 1

    async def wait_durable(self, timeout_s: float = 30.0) -> None:
        """Returns once every entry recorded before the call is durable (or was refused)."""
        target = self._recorded
        async with self._progress:
            await asyncio.wait_for(
                self._progress.wait_for(lambda: self._durable >= target), timeout_s
            )

    async def _run(self) -> None:
        """Commits batches until cancelled. A database error propagates to the supervisor
        (logged with its traceback; the loop restarts with backoff) and the batch is retried
        first; an entry the ledger cannot encode is logged and left out."""
        while True:
            if not self._batch:
                self._batch.append(await self._queue.get())
            while len(self._batch) < self._max_batch and not self._queue.empty():
                self._batch.append(self._queue.get_nowait())
            began = time.perf_counter()
            commit = asyncio.ensure_future(asyncio.to_thread(self.store.append, self._batch))
            try:
                # A commit is never abandoned half-way: cancelling the writer waits for it,
                # so no batch is both committed and retried.
                await asyncio.shield(commit)
            except InvalidEntryError as exc:
                bad = self._batch.pop(exc.index)
                self.refused += 1
                async with self._progress:
                    self._durable += 1  # settled: it will never be written
                    self._progress.notify_all()
                log_event(
                    _log,
                    "ledger_entry_refused",
                    logging.ERROR,
                    request_id=bad.request_id,
                    error=str(exc),
                )
                continue
            except asyncio.CancelledError:
                await asyncio.wait({commit})
                if not commit.cancelled() and commit.exception() is None:
                    await self._committed(len(self._batch))
                raise
            await self._committed(len(self._batch))
            if len(self._batch) >= 1000:
                log_event(
                    _log,
                    "ledger_batch_committed",
                    logging.DEBUG,
                    rows=len(self._batch),
                    ms=round((time.perf_counter() - began) * 1000, 1),
                )

    async def _committed(self, rows: int) -> None:
        self._batch = []
        self.commits += 1
        async with self._progress:
            self._durable += rows
            self._progress.notify_all()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Writes what is queued (bounded by ``timeout_s``), then stops."""
        try:
            await self.wait_durable(timeout_s)
        except TimeoutError:
            log_event(_log, "ledger_close_incomplete", logging.ERROR, pending=self.pending)
        self._task.cancel()
