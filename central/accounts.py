"""Accounts and their credentials. Only Argon2id hashes are stored; secrets are returned
once, on creation or reset, and never logged."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from central._guard import uncancellable
from central.errors import BadCredentialsError
from cgn_common.errors import InvalidArgumentError, NotFoundError
from cgn_common.ids import new_id, new_secret
from cgn_common.types import DEFAULT_ENTERPRISE_TIERS, AccountKind, Tier


class AccountRow(SQLModel, table=True):
    """The accounts table."""

    __tablename__ = "accounts"

    account_id: str = Field(primary_key=True)
    kind: int
    display_name: str = ""
    allowed_tiers: str = ""  # comma-separated Tier numbers
    tier: int = 0
    parent_account_id: str = ""
    pseudonym: str = Field(index=True, unique=True)
    verifier_count: int = 2
    ethereum_address: str = ""
    banned: bool = False
    api_key_hash: str
    password_hash: str
    created_at: datetime


class AccountPayoutRow(SQLModel, table=True):
    """How an account's payouts are shared: its chosen charity and the share (a table of its
    own, so databases made before it gain it without a migration)."""

    __tablename__ = "account_payouts"

    account_id: str = Field(primary_key=True)
    charity_account_id: str = ""
    charity_share_ppm: int = 0


class AccountLimitsRow(SQLModel, table=True):
    """An account's own limits, where an operator set them (a table of its own, like
    ``account_payouts``, so older databases gain it without a migration)."""

    __tablename__ = "account_limits"

    account_id: str = Field(primary_key=True)
    #: The largest request body in bytes; 0: Central's default.
    max_body_bytes: int = 0


#: The largest per-account body limit that can be stored (SQL BIGINT).
_MAX_STORED_BYTES = 2**63 - 1

#: Central's default per-account request-body limit: 2 GiB.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class PayoutChoice:
    """An account's charity and the share of its payouts it gives (ppm)."""

    charity_account_id: str = ""
    charity_share_ppm: int = 0


_ETH_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


@dataclass(frozen=True)
class Account:
    """An account, without secrets."""

    account_id: str
    kind: AccountKind
    display_name: str
    allowed_tiers: tuple[Tier, ...]
    tier: Tier | None
    parent_account_id: str
    pseudonym: str
    verifier_count: int
    ethereum_address: str
    banned: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: AccountRow) -> Account:
        """Builds an Account from its table row."""
        tiers = tuple(Tier(int(t)) for t in row.allowed_tiers.split(",") if t)
        return cls(
            account_id=row.account_id,
            kind=AccountKind(row.kind),
            display_name=row.display_name,
            allowed_tiers=tiers,
            tier=Tier(row.tier) if row.tier else None,
            parent_account_id=row.parent_account_id,
            pseudonym=row.pseudonym,
            verifier_count=row.verifier_count,
            ethereum_address=row.ethereum_address,
            banned=row.banned,
            created_at=(
                row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            ),
        )


@dataclass(frozen=True)
class NewAccount:
    """A created account and its secrets, to be shown once."""

    account: Account
    api_key: str
    password: str


class AccountStore:
    """Creates accounts and verifies their credentials.

    Argon2id runs in a worker thread so the event loop keeps serving. An unknown account
    is checked against a dummy hash, so it costs the same time as a wrong key.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        hasher: PasswordHasher | None = None,
        memory_budget_bytes: int = 512 * 1024 * 1024,
        default_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._engine = engine
        #: The body limit of accounts without one of their own.
        self.default_max_body_bytes = default_max_body_bytes
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash = self._hasher.hash(new_secret("dummy"))
        # Each Argon2 check holds memory_cost KiB: bound the checks running at once by the
        # memory budget and the cores, so a login flood queues instead of exhausting memory.
        per_check = self._hasher.memory_cost * 1024
        workers = max(1, min(os.cpu_count() or 1, memory_budget_bytes // per_check))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self.argon2_workers = workers
        #: Argon2 checks run so far (queued checks cancelled by the node are not counted).
        self.hash_checks = 0

    def _check(self, stored: str, api_key: str) -> bool:
        self.hash_checks += 1
        return bool(self._hasher.verify(stored, api_key))

    def close(self) -> None:
        """Stops the Argon2 pool (queued checks are dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    @uncancellable
    async def create(
        self,
        kind: AccountKind,
        display_name: str = "",
        allowed_tiers: Sequence[Tier] = (),
        tier: Tier | None = None,
        parent_account_id: str = "",
        ethereum_address: str = "",
        max_body_bytes: int = 0,
    ) -> NewAccount:
        """Creates an account; returns it with its API key and password. ``max_body_bytes``:
        its request-body limit (0: Central's default)."""
        if kind is AccountKind.MINER and tier is None:
            raise InvalidArgumentError("a miner account needs a tier")
        _check_body_limit(max_body_bytes)
        if kind is AccountKind.ENTERPRISE and not allowed_tiers:
            allowed_tiers = DEFAULT_ENTERPRISE_TIERS
        if parent_account_id:
            await self.get(parent_account_id)
        api_key, password = new_secret("cgnk"), new_secret("cgnp")
        api_key_hash, password_hash = await asyncio.gather(
            asyncio.to_thread(self._hasher.hash, api_key),
            asyncio.to_thread(self._hasher.hash, password),
        )
        account_id = new_id("acct")
        row = AccountRow(
            account_id=account_id,
            kind=int(kind),
            display_name=display_name,
            allowed_tiers=",".join(str(int(t)) for t in allowed_tiers),
            tier=int(tier) if tier else 0,
            parent_account_id=parent_account_id,
            pseudonym="p_" + hashlib.sha256(new_secret("pseudo").encode()).hexdigest()[:32],
            ethereum_address=ethereum_address,
            api_key_hash=api_key_hash,
            password_hash=password_hash,
            created_at=datetime.now(UTC),
        )
        async with AsyncSession(self._engine, expire_on_commit=False) as session:
            session.add(row)
            if max_body_bytes:
                session.add(AccountLimitsRow(account_id=account_id, max_body_bytes=max_body_bytes))
            await session.commit()
        return NewAccount(Account.from_row(row), api_key, password)

    @uncancellable
    async def _row(self, account_id: str) -> AccountRow | None:
        async with AsyncSession(self._engine) as session:
            return await session.get(AccountRow, account_id)

    async def get(self, account_id: str) -> Account:
        """Returns an account or raises NotFoundError."""
        row = await self._row(account_id)
        if row is None:
            raise NotFoundError(f"no account {account_id!r}")
        return Account.from_row(row)

    @uncancellable
    async def list(self, kind: AccountKind | None = None) -> list[Account]:
        """Returns every account, or those of ``kind``, oldest first."""
        query = select(AccountRow).order_by(AccountRow.created_at)  # type: ignore[arg-type]
        if kind is not None:
            query = query.where(AccountRow.kind == int(kind))
        async with AsyncSession(self._engine) as session:
            return [Account.from_row(r) for r in (await session.exec(query)).all()]

    async def verify_key(
        self, account_id: str, api_key: str, allowed_kinds: Sequence[AccountKind] = ()
    ) -> Account:
        """Returns the account when ``api_key`` is its key; else BadCredentialsError.

        Unknown ids, wrong keys, wrong kinds and banned accounts all fail the same way.
        """
        row = await self._row(account_id) if account_id else None
        stored = row.api_key_hash if row is not None else self._dummy_hash
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._pool, self._check, stored, api_key
            )
        except (VerificationError, InvalidHashError):
            raise BadCredentialsError() from None
        if row is None or row.banned:
            raise BadCredentialsError()
        if allowed_kinds and AccountKind(row.kind) not in allowed_kinds:
            raise BadCredentialsError()
        return Account.from_row(row)

    @uncancellable
    async def set_banned(self, account_id: str, banned: bool) -> Account:
        """Bans or unbans an account."""
        async with AsyncSession(self._engine, expire_on_commit=False) as session:
            row = await session.get(AccountRow, account_id)
            if row is None:
                raise NotFoundError(f"no account {account_id!r}")
            row.banned = banned
            session.add(row)
            await session.commit()
        return Account.from_row(row)

    @uncancellable
    async def payout_choice(self, account_id: str) -> PayoutChoice:
        """The account's charity choice (none when it never chose)."""
        async with AsyncSession(self._engine) as session:
            row = await session.get(AccountPayoutRow, account_id)
        if row is None:
            return PayoutChoice()
        return PayoutChoice(row.charity_account_id, row.charity_share_ppm)

    @uncancellable
    async def max_body_bytes(self, account_id: str) -> int:
        """The account's own request-body limit in bytes (0: it has none)."""
        async with AsyncSession(self._engine) as session:
            row = await session.get(AccountLimitsRow, account_id)
        return row.max_body_bytes if row is not None else 0

    async def effective_max_body_bytes(self, account_id: str) -> int:
        """The request-body limit that applies to the account: its own, else the default."""
        return await self.max_body_bytes(account_id) or self.default_max_body_bytes

    @uncancellable
    async def all_max_body_bytes(self) -> dict[str, int]:
        """Every account's own request-body limit, by account id (accounts without one are
        absent)."""
        async with AsyncSession(self._engine) as session:
            rows = (await session.exec(select(AccountLimitsRow))).all()
        return {r.account_id: r.max_body_bytes for r in rows}

    @uncancellable
    async def set_max_body_bytes(self, account_id: str, max_body_bytes: int) -> None:
        """Sets the account's request-body limit (0: back to Central's default). Nodes apply
        it to sessions opened from now on."""
        _check_body_limit(max_body_bytes)
        async with AsyncSession(self._engine) as session:
            if await session.get(AccountRow, account_id) is None:
                raise NotFoundError(f"no account {account_id!r}")
            row = await session.get(AccountLimitsRow, account_id) or AccountLimitsRow(
                account_id=account_id
            )
            row.max_body_bytes = max_body_bytes
            session.add(row)
            await session.commit()

    @uncancellable
    async def update_payouts(
        self,
        account_id: str,
        *,
        ethereum_address: str | None = None,
        charity_account_id: str | None = None,
        charity_share_ppm: int | None = None,
    ) -> tuple[Account, PayoutChoice]:
        """Changes where an account's payouts go; ``None`` leaves a setting as it is."""
        if (
            ethereum_address is not None
            and ethereum_address
            and not _ETH_ADDRESS.match(ethereum_address)
        ):
            raise InvalidArgumentError("ethereum_address must be 0x and 40 hex digits")
        if charity_share_ppm is not None and not 0 <= charity_share_ppm <= 1_000_000:
            raise InvalidArgumentError("charity_share_ppm must be within 0..1000000")
        async with AsyncSession(self._engine, expire_on_commit=False) as session:
            row = await session.get(AccountRow, account_id)
            if row is None:
                raise NotFoundError(f"no account {account_id!r}")
            if charity_account_id:
                charity = await session.get(AccountRow, charity_account_id)
                if charity is None or AccountKind(charity.kind) is not AccountKind.CHARITY:
                    raise InvalidArgumentError(f"{charity_account_id!r} is not a charity account")
            payouts = await session.get(AccountPayoutRow, account_id) or AccountPayoutRow(
                account_id=account_id
            )
            if ethereum_address is not None:
                row.ethereum_address = ethereum_address
                session.add(row)
            if charity_account_id is not None:
                payouts.charity_account_id = charity_account_id
            if charity_share_ppm is not None:
                payouts.charity_share_ppm = charity_share_ppm
            session.add(payouts)
            await session.commit()
        return Account.from_row(row), PayoutChoice(
            payouts.charity_account_id, payouts.charity_share_ppm
        )


def _check_body_limit(max_body_bytes: int) -> None:
    if not 0 <= max_body_bytes <= _MAX_STORED_BYTES:
        raise InvalidArgumentError(f"max_body_bytes must be within 0..{_MAX_STORED_BYTES}")
