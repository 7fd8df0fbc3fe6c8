"""Session revocations at Central on a real SQLite database: epochs only rise, single
sessions are kept until they expire, and the recent ones come back in complete pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col

from central.db import open_engine
from central.revocations import RevocationStore, SessionEpochRow, SessionRevocation
from cgn_common.errors import InvalidArgumentError


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RevocationStore]:
    engine = await open_engine(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")
    yield RevocationStore(engine)
    await engine.dispose()


async def test_an_accounts_epoch_starts_at_zero_and_rises_with_each_revocation(
    store: RevocationStore,
) -> None:
    assert await store.epoch("acct_a") == 0
    assert await store.revoke_account("acct_a") == 1
    assert await store.revoke_account("acct_a") == 2
    assert await store.epoch("acct_a") == 2
    assert await store.epoch("acct_b") == 0


async def test_recent_revocations_come_in_complete_pages(store: RevocationStore) -> None:
    accounts = {f"acct_{i:03}" for i in range(7)}
    for account in accounts:
        await store.revoke_account(account)
    later = datetime.now(UTC) + timedelta(hours=1)
    sessions = {f"s{i:03}" for i in range(5)}
    for session in sessions:
        await store.revoke_session(SessionRevocation("acct_x", session, later))
    await store.revoke_session(SessionRevocation("acct_x", "s000", later))  # twice is harmless
    await store.revoke_session(  # already expired: concerns no live token
        SessionRevocation("acct_x", "expired", datetime.now(UTC) - timedelta(seconds=1))
    )
    seen_accounts: set[str] = set()
    seen_sessions: set[str] = set()
    token, pages = "", 0
    while True:
        page = await store.recent(timedelta(minutes=5), page_size=3, page_token=token)
        pages += 1
        seen_accounts |= {r.account_id for r in page.accounts}
        seen_sessions |= {r.session_id for r in page.sessions}
        assert all(r.expires_at == later for r in page.sessions)
        if not (token := page.next_page_token):
            break
    assert seen_accounts == accounts
    assert seen_sessions == sessions
    assert pages == 3


async def test_what_is_older_than_the_lookback_is_left_out(store: RevocationStore) -> None:
    await store.revoke_account("acct_old")
    await store.revoke_account("acct_new")
    async with store._engine.begin() as conn:  # age one revocation by two hours
        await conn.execute(
            update(SessionEpochRow)
            .where(col(SessionEpochRow.account_id) == "acct_old")
            .values(changed_at=datetime.now(UTC) - timedelta(hours=2))
        )
    page = await store.recent(timedelta(hours=1))
    assert [r.account_id for r in page.accounts] == ["acct_new"]
    assert [r.account_id for r in (await store.recent(timedelta(hours=3))).accounts] == [
        "acct_new",
        "acct_old",
    ]


async def test_a_forged_page_token_is_refused(store: RevocationStore) -> None:
    with pytest.raises(InvalidArgumentError):
        await store.recent(timedelta(hours=1), page_token="not-a-token")
