"""Session revocations, recorded at Central so that no node process has to remember them.

Two kinds (docs/security.md, "Session revocation"):

- **Account epochs.** Each account has a session epoch, 0 until its sessions are first
  revoked. A node writes the epoch Central gave at login into the token; revoking every
  session of an account (ban, "log out everywhere", key reset) raises the epoch, and every
  node refuses tokens whose epoch is below the latest it heard.
- **Single sessions.** ``DELETE /v1/sessions`` records the one session id, kept until the
  token would have expired anyway.

Nodes hear of both at once through a directive on their live link, and on every new link
ask for what was recorded within a lookback window (:meth:`RevocationStore.recent`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from central._guard import uncancellable
from cgn_common.errors import InvalidArgumentError

#: Most revocations of each kind in one page of :meth:`RevocationStore.recent`.
MAX_PAGE = 5000


class SessionEpochRow(SQLModel, table=True):
    """The session epoch of every account whose sessions were ever revoked."""

    __tablename__ = "session_epochs"

    account_id: str = Field(primary_key=True)
    epoch: int
    changed_at: datetime = Field(index=True)


class RevokedSessionRow(SQLModel, table=True):
    """Single sessions revoked before they expired."""

    __tablename__ = "revoked_sessions"

    session_id: str = Field(primary_key=True)
    account_id: str
    expires_at: datetime
    revoked_at: datetime = Field(index=True)


@dataclass(frozen=True)
class AccountRevocation:
    """Every session of ``account_id`` with an epoch below ``epoch`` is revoked."""

    account_id: str
    epoch: int


@dataclass(frozen=True)
class SessionRevocation:
    """One session, revoked until ``expires_at``."""

    account_id: str
    session_id: str
    expires_at: datetime


@dataclass(frozen=True)
class RevocationPage:
    """One page of recent revocations; ``next_page_token`` is empty on the last."""

    accounts: list[AccountRevocation]
    sessions: list[SessionRevocation]
    next_page_token: str


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _cursor(page_token: str) -> tuple[str, str]:
    """(last account id, last session id) of the previous page."""
    if not page_token:
        return "", ""
    try:
        data = json.loads(base64.urlsafe_b64decode(page_token.encode()))
        return str(data["a"]), str(data["s"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgumentError("page_token is not one this Central issued") from None


class RevocationStore:
    """Central's record of session revocations."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @uncancellable
    async def epoch(self, account_id: str) -> int:
        """The account's current session epoch (0 when never revoked)."""
        async with AsyncSession(self._engine) as session:
            row = await session.get(SessionEpochRow, account_id)
            return row.epoch if row is not None else 0

    @uncancellable
    async def revoke_account(self, account_id: str) -> int:
        """Raises the account's session epoch; returns the new epoch."""
        async with AsyncSession(self._engine, expire_on_commit=False) as session:
            row = await session.get(SessionEpochRow, account_id, with_for_update=True)
            now = datetime.now(UTC)
            if row is None:
                row = SessionEpochRow(account_id=account_id, epoch=1, changed_at=now)
            else:
                row.epoch += 1
                row.changed_at = now
            session.add(row)
            await session.commit()
            return row.epoch

    @uncancellable
    async def revoke_session(self, revocation: SessionRevocation) -> None:
        """Records one revoked session (again is harmless)."""
        async with AsyncSession(self._engine) as session:
            existing = await session.get(RevokedSessionRow, revocation.session_id)
            if existing is None:
                session.add(
                    RevokedSessionRow(
                        session_id=revocation.session_id,
                        account_id=revocation.account_id,
                        expires_at=revocation.expires_at,
                        revoked_at=datetime.now(UTC),
                    )
                )
                await session.commit()

    @uncancellable
    async def recent(
        self, lookback: timedelta, page_size: int = MAX_PAGE, page_token: str = ""
    ) -> RevocationPage:
        """Revocations recorded within ``lookback`` before now, in pages ordered by id.

        Single sessions that have expired since are left out: they concern no live token.
        """
        size = min(page_size or MAX_PAGE, MAX_PAGE)
        after_account, after_session = _cursor(page_token)
        now = datetime.now(UTC)
        since = now - lookback
        async with AsyncSession(self._engine) as session:
            epochs = (
                await session.exec(
                    select(SessionEpochRow)
                    .where(SessionEpochRow.changed_at >= since)
                    .where(SessionEpochRow.account_id > after_account)
                    .order_by(col(SessionEpochRow.account_id))
                    .limit(size)
                )
            ).all()
            revoked = (
                await session.exec(
                    select(RevokedSessionRow)
                    .where(RevokedSessionRow.revoked_at >= since)
                    .where(RevokedSessionRow.expires_at > now)
                    .where(RevokedSessionRow.session_id > after_session)
                    .order_by(col(RevokedSessionRow.session_id))
                    .limit(size)
                )
            ).all()
        more = len(epochs) == size or len(revoked) == size
        next_token = ""
        if more:
            # An exhausted kind keeps a cursor past its end ("\uffff" sorts after every id).
            last_account = epochs[-1].account_id if len(epochs) == size else "\uffff"
            last_session = revoked[-1].session_id if len(revoked) == size else "\uffff"
            next_token = base64.urlsafe_b64encode(
                json.dumps({"a": last_account, "s": last_session}).encode()
            ).decode()
        return RevocationPage(
            accounts=[AccountRevocation(r.account_id, r.epoch) for r in epochs],
            sessions=[
                SessionRevocation(r.account_id, r.session_id, _aware(r.expires_at)) for r in revoked
            ],
            next_page_token=next_token,
        )
