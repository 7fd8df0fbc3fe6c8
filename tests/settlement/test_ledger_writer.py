"""The background ledger writer: group commit, nothing lost when a commit fails, an entry
that can never be written refused without blocking the others."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from cgn_common.tasks import Supervisor
from settlement.ledger import LedgerEntry, LedgerStore
from settlement.ledger_db import open_ledger
from settlement.ledger_writer import LedgerWriter
from tests.settlement.test_ledger_store import entry


@pytest.fixture
def store(tmp_path: Path) -> LedgerStore:
    return LedgerStore(open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}"), "node_1")


async def test_concurrent_records_are_committed_in_groups_and_numbered_without_gaps(
    store: LedgerStore,
) -> None:
    supervisor = Supervisor("test")
    writer = LedgerWriter(store, supervisor)
    try:
        await asyncio.gather(*(writer.record(entry(n)) for n in range(2000)))
        await writer.wait_durable()
        assert store.count() == 2000
        assert writer.pending == 0
        assert writer.commits < 2000  # rows that arrived together were committed together
        report = store.verify()
        assert report.ok
        assert (report.first_seq, report.last_seq) == (1, 2000)
    finally:
        await writer.close()
        await supervisor.close()


async def test_a_failed_commit_is_retried_and_nothing_is_written_twice(
    store: LedgerStore, caplog: pytest.LogCaptureFixture
) -> None:
    real_commit = store.commit
    failures = 0

    def flaky(batch: Any) -> Any:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real_commit(batch)

    store.commit = flaky  # type: ignore[method-assign]
    supervisor = Supervisor("test")
    writer = LedgerWriter(store, supervisor)
    try:
        with caplog.at_level(logging.ERROR):
            for n in range(50):
                await writer.record(entry(n))
            await writer.wait_durable()
        assert failures == 1
        assert "database is locked" in caplog.text  # the failure was logged, with its cause
        assert store.count() == 50
        assert store.verify().ok
    finally:
        await writer.close()
        await supervisor.close()


async def test_an_entry_that_can_never_be_written_is_refused_and_the_rest_are_not_held(
    store: LedgerStore,
) -> None:
    supervisor = Supervisor("test")
    writer = LedgerWriter(store, supervisor)
    bad = LedgerEntry(**{**entry(1).__dict__, "fee_atto": entry(1).fee_atto + 1})
    unencodable = LedgerEntry(**{**entry(2).__dict__, "enterprise": "p_\ud800"})
    try:
        with pytest.raises(ValueError, match="sum"):
            await writer.record(bad)
        await writer.record(entry(0))
        await writer.record(unencodable)  # passes the cheap checks, fails at encoding
        await writer.record(entry(3))
        await writer.wait_durable()
        assert [row.public["enterprise"] for row in store.rows()] == [b"p_ent_a", b"p_ent_a"]
        assert writer.refused == 1
        assert store.verify().ok
    finally:
        await writer.close()
        await supervisor.close()


async def test_a_commit_failing_while_the_next_batch_is_prepared_loses_and_reorders_nothing(
    store: LedgerStore,
) -> None:
    real_prepare, real_commit = store.prepare, store.commit
    prepared_ahead = 0
    commits = 0

    def commit(batch: Any) -> Any:
        nonlocal commits
        commits += 1
        if commits == 3:
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        return real_commit(batch)

    def prepare(entries: Any) -> Any:
        nonlocal prepared_ahead
        batch = real_prepare(entries)
        prepared_ahead = max(prepared_ahead, batch.first_seq - store._next_seq)
        return batch

    store.prepare = prepare  # type: ignore[method-assign]
    store.commit = commit  # type: ignore[method-assign]
    supervisor = Supervisor("test")
    writer = LedgerWriter(store, supervisor, max_batch=10)
    try:
        for n in range(100):
            await writer.record(entry(n))
        await writer.wait_durable()
        assert prepared_ahead > 0  # a batch was prepared while the one before it committed
        assert commits > 10  # the failed commit happened and was retried
        rows = store.rows(limit=1000)
        assert [row.row_seq for row in rows] == list(range(1, 101))
        # Numbered in the order recorded, the failed batch and the one prepared behind it
        # included.
        assert [store.by_request(f"req_{n}")[0].row_seq for n in range(100)] == list(range(1, 101))
        assert store.verify().ok
    finally:
        await writer.close()
        await supervisor.close()
