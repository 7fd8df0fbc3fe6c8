"""Accounts on a real SQLite database: Argon2id hashes only, uniform failures."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import text

from central.accounts import AccountStore
from central.db import open_engine
from central.errors import BAD_CREDENTIALS, BadCredentialsError
from cgn_common.errors import InvalidArgumentError, NotFoundError
from cgn_common.types import DEFAULT_ENTERPRISE_TIERS, AccountKind, Tier

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AccountStore]:
    engine = await open_engine(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")
    yield AccountStore(engine, FAST)
    await engine.dispose()


async def test_key_verifies_and_only_hashes_are_stored(store: AccountStore) -> None:
    created = await store.create(AccountKind.ENTERPRISE, "acme")
    assert created.account.allowed_tiers == DEFAULT_ENTERPRISE_TIERS
    account = await store.verify_key(created.account.account_id, created.api_key)
    assert account.account_id == created.account.account_id
    async with store._engine.connect() as conn:  # inspecting storage
        row = (await conn.execute(text("SELECT api_key_hash, password_hash FROM accounts"))).one()
    assert row[0].startswith("$argon2id$")
    assert row[1].startswith("$argon2id$")
    assert created.api_key not in row[0]
    assert created.password not in row[1]


async def test_every_failure_looks_the_same(store: AccountStore) -> None:
    created = await store.create(AccountKind.ENTERPRISE, "acme")
    attempts = [
        (created.account.account_id, "cgnk_wrong", ()),
        ("acct_unknown", created.api_key, ()),
        ("", created.api_key, ()),
        (created.account.account_id, created.api_key, (AccountKind.MINER,)),
    ]
    for account_id, key, kinds in attempts:
        with pytest.raises(BadCredentialsError) as caught:
            await store.verify_key(account_id, key, kinds)
        assert caught.value.message == BAD_CREDENTIALS
    await store.set_banned(created.account.account_id, True)
    with pytest.raises(BadCredentialsError):
        await store.verify_key(created.account.account_id, created.api_key)


async def test_miner_accounts_need_a_tier_and_keep_their_owner(store: AccountStore) -> None:
    with pytest.raises(InvalidArgumentError):
        await store.create(AccountKind.MINER, "m")
    owner = await store.create(AccountKind.ENTERPRISE, "acme")
    miner = await store.create(
        AccountKind.MINER,
        "m",
        tier=Tier.TIER_1_PRIVATE,
        parent_account_id=owner.account.account_id,
    )
    account = await store.verify_key(miner.account.account_id, miner.api_key, [AccountKind.MINER])
    assert account.tier is Tier.TIER_1_PRIVATE
    assert account.parent_account_id == owner.account.account_id


async def test_a_wrong_key_and_an_unknown_account_cost_the_same(tmp_path: Path) -> None:
    # The production parameters: the comparison is about Argon2's cost, not the test's.
    engine = await open_engine(f"sqlite+aiosqlite:///{tmp_path / 'timing.db'}")
    store = AccountStore(engine)
    try:
        created = await store.create(AccountKind.ENTERPRISE, "acme")
        account_id = created.account.account_id

        async def timed(account: str) -> tuple[float, str]:
            started = time.perf_counter()
            with pytest.raises(BadCredentialsError) as refused:
                await store.verify_key(account, "cgnk_wrong")
            return time.perf_counter() - started, refused.value.message

        # Interleaved, so both kinds see the same machine (load, caches, clock speed).
        wrong: list[tuple[float, str]] = []
        unknown: list[tuple[float, str]] = []
        for _ in range(50):
            wrong.append(await timed(account_id))
            unknown.append(await timed("acct_" + "0" * 32))
        assert {m for _, m in wrong} == {m for _, m in unknown} == {BAD_CREDENTIALS}
        median_wrong = statistics.median(t for t, _ in wrong)
        median_unknown = statistics.median(t for t, _ in unknown)
        assert abs(median_wrong - median_unknown) / median_wrong < 0.2
        assert store.hash_checks == 100
    finally:
        store.close()
        await engine.dispose()


async def test_an_accounts_body_limit_is_its_own_else_centrals_default(tmp_path: Path) -> None:
    engine = await open_engine(f"sqlite+aiosqlite:///{tmp_path / 'central.db'}")
    store = AccountStore(engine, FAST, default_max_body_bytes=3000)
    try:
        plain = (await store.create(AccountKind.ENTERPRISE, "plain")).account.account_id
        own = (
            await store.create(AccountKind.ENTERPRISE, "own", max_body_bytes=1234)
        ).account.account_id
        assert await store.max_body_bytes(plain) == 0
        assert await store.effective_max_body_bytes(plain) == 3000
        assert await store.effective_max_body_bytes(own) == 1234
        await store.set_max_body_bytes(plain, 10**12)
        assert await store.effective_max_body_bytes(plain) == 10**12
        assert await store.all_max_body_bytes() == {plain: 10**12, own: 1234}
        await store.set_max_body_bytes(own, 0)
        assert await store.effective_max_body_bytes(own) == 3000
        with pytest.raises(InvalidArgumentError, match="max_body_bytes"):
            await store.set_max_body_bytes(own, -1)
        with pytest.raises(InvalidArgumentError, match="max_body_bytes"):
            await store.create(AccountKind.ENTERPRISE, "huge", max_body_bytes=2**63)
        with pytest.raises(NotFoundError):
            await store.set_max_body_bytes("acct_nobody", 5)
    finally:
        store.close()
        await engine.dispose()
