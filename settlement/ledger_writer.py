"""The node's background ledger writer: group commit off the response's critical path.

``record`` puts an entry in a bounded queue and returns at once; one task takes what is
queued (up to ``max_batch``), numbers and hashes it on a worker thread, commits it in one
transaction on another while it prepares the next batch, and repeats. While one batch
commits, the next one gathers, so the commit rate adapts to the load; a batch also waits
``LINGER_S`` after its first row for others, so a node at a few hundred requests a second
commits several rows per transaction rather than one. A full queue makes ``record`` wait (back
pressure) rather than drop a row.

Durability (docs/ledger.md): a row is *durable* once its batch committed (SQLite WAL with
``synchronous=NORMAL`` survives a crash of the process, not a power loss; PostgreSQL with
its defaults survives both). Rows queued or committing when the node dies are lost: at most
``max_queue`` rows, in practice the rows of the last few milliseconds (plus the linger).
``wait_durable`` waits for everything recorded so far.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cgn_common.logs import log_event
from cgn_common.tasks import Supervisor
from settlement.ledger import (
    CHECKPOINT_ROWS,
    InvalidEntryError,
    LedgerEntry,
    LedgerStore,
    PreparedBatch,
    check_entry,
)

_log = logging.getLogger(__name__)

#: How long a batch waits after its first row for more (10 ms: a row becomes durable that
#: much later at most; measured in docs/performance.md).
LINGER_S = 0.01
#: A batch of at most this many rows is numbered and hashed on the event loop's thread (about
#: 15 µs a row here: half a millisecond at most), a larger one on a worker thread.
INLINE_PREPARE_ROWS = 32


class LedgerWriter:
    """Appends recorded entries to ``store`` in batches, under ``supervisor``."""

    def __init__(
        self,
        store: LedgerStore,
        supervisor: Supervisor,
        *,
        max_queue: int = 50_000,
        max_batch: int = 20_000,
        linger_s: float = LINGER_S,
    ) -> None:
        self.store = store
        self._linger_s = linger_s
        self._queue: asyncio.Queue[LedgerEntry] = asyncio.Queue(max_queue)
        self._max_batch = max_batch
        self._recorded = 0
        self._durable = 0
        self._progress = asyncio.Condition()
        self.commits = 0
        #: Entries the ledger could not encode (logged at ERROR, left out).
        self.refused = 0
        #: Batches taken from the queue and not yet committed, oldest first (kept across a
        #: restart of the loop, which commits them again in order).
        self._taken: list[list[LedgerEntry]] = []
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._supervisor = supervisor
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
        """Commits batches until cancelled, two stages deep: while one batch commits on a
        worker thread (SQLite inserts without the GIL), the next is numbered and hashed on
        another. A database error propagates to the supervisor (logged with its traceback;
        the loop restarts with backoff) and every batch not committed is prepared and
        committed again, in order; an entry the ledger cannot encode is logged and left out."""
        self.store.rewind()
        for batch in list(self._taken):  # after a restart: what was taken, in order
            prepared = await self._prepare(batch)
            if prepared is not None:
                await self._commit(self._start(prepared))
        committing: asyncio.Future[int] | None = None
        try:
            while True:
                if committing is None or not self._queue.empty():
                    batch = await self._take()
                    prepared = await self._prepare(batch)
                else:
                    prepared = None  # nothing to prepare meanwhile: finish the commit first
                if committing is not None:
                    done, committing = committing, None
                    await self._commit(done)
                if prepared is not None:
                    committing = self._start(prepared)
        except asyncio.CancelledError:
            if committing is not None:  # cancelled while preparing or waiting: count it
                await self._commit(committing)
            raise

    async def _take(self) -> list[LedgerEntry]:
        """The next batch: what is queued, up to max_batch, waiting for one entry if none,
        then ``linger_s`` for more (a transaction and two thread hand-offs per batch, not
        per row, at a few hundred requests a second too)."""
        batch = [await self._queue.get()]
        self._taken.append(batch)  # from here on a restart commits it
        if self._linger_s and self._queue.qsize() < self._max_batch - 1:
            await asyncio.sleep(self._linger_s)
        while len(batch) < self._max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _prepare(self, batch: list[LedgerEntry]) -> PreparedBatch | None:
        """Numbers and hashes ``batch`` (on a worker thread when it is large), leaving out (and
        logging) the entries that can never be written; None when none is left."""
        while batch:
            try:
                if len(batch) <= INLINE_PREPARE_ROWS:
                    # A few rows are hashed in less time than a thread hand-off costs (and
                    # the worker would wait for the GIL anyway).
                    return self.store.prepare(batch)
                work = asyncio.ensure_future(asyncio.to_thread(self.store.prepare, batch))
                # Never abandoned half-way: the store numbers batches in order.
                return await asyncio.shield(work)
            except InvalidEntryError as exc:
                bad = batch.pop(exc.index)
                self.refused += 1
                await self._settled(1)  # it will never be written
                log_event(
                    _log,
                    "ledger_entry_refused",
                    logging.ERROR,
                    request_id=bad.request_id,
                    error=str(exc),
                )
            except asyncio.CancelledError:
                await asyncio.wait({work})
                raise
        self._taken.remove(batch)
        return None

    def _start(self, prepared: PreparedBatch) -> asyncio.Future[int]:
        return asyncio.ensure_future(asyncio.to_thread(self.store.commit, prepared))

    async def _commit(self, committing: asyncio.Future[int]) -> None:
        """Waits for the oldest taken batch's commit and counts its rows durable. A commit is
        never abandoned half-way: cancelling the writer waits for it, so no batch is both
        committed and committed again."""
        began = time.perf_counter()
        try:
            rows = await asyncio.shield(committing)
        except asyncio.CancelledError:
            await asyncio.wait({committing})
            if not committing.cancelled() and committing.exception() is None:
                await self._committed(committing.result())
            raise
        await self._committed(rows)
        if rows >= 1000:
            log_event(
                _log,
                "ledger_batch_committed",
                logging.DEBUG,
                rows=rows,
                ms=round((time.perf_counter() - began) * 1000, 1),
            )

    async def _committed(self, rows: int) -> None:
        self._taken.pop(0)
        self.commits += 1
        self._since_checkpoint += rows
        if self._since_checkpoint >= CHECKPOINT_ROWS and (
            self._checkpointing is None or self._checkpointing.done()
        ):
            self._since_checkpoint = 0
            self._checkpointing = self._supervisor.spawn(
                "ledger-checkpoint", asyncio.to_thread(self.store.checkpoint)
            )
        await self._settled(rows)

    async def _settled(self, rows: int) -> None:
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
        if self._checkpointing is not None:  # a checkpoint's thread ends before the engine
            await asyncio.wait({self._checkpointing}, timeout=timeout_s)
