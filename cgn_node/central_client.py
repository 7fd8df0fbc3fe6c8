"""What the node asks Central, as plain Python (the transport is in ``_central_link``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cgn_common.types import AccountKind, Tier, WorkGrade


@dataclass(frozen=True)
class AccountInfo:
    """An account's standing as Central reports it."""

    account_id: str
    kind: AccountKind
    allowed_tiers: tuple[Tier, ...]
    pseudonym: str
    tier: Tier | None
    banned: bool = False
    #: The account's session epoch, written into the session tokens issued for it.
    session_epoch: int = 0
    #: Where its payouts go or its charges come from (hex, 0x-prefixed; "" when unknown).
    ethereum_address: str = ""
    #: The charity it gives a share of its payouts to ("" for none), that share (ppm) and
    #: the charity's address.
    charity_pseudonym: str = ""
    charity_share_ppm: int = 0
    charity_ethereum_address: str = ""
    #: The largest request body in bytes it may send (its own limit or Central's default);
    #: 0: no account limit beyond the node's.
    max_body_bytes: int = 0


@dataclass(frozen=True)
class MinerInfo:
    """A miner's standing as Central reports it."""

    account: AccountInfo
    max_grade: WorkGrade
    owner_account_id: str


@dataclass
class SessionRevocations:
    """Revocations Central recorded lately: (account, epoch) and (session id, expiry)."""

    accounts: list[tuple[str, int]] = field(default_factory=list)
    sessions: list[tuple[str, float]] = field(default_factory=list)


class CentralClient(Protocol):
    """The questions a node may ask Central (over the stream Central opened)."""

    async def verify_credential(
        self, account_id: str, api_key: str, kinds: Sequence[AccountKind]
    ) -> AccountInfo:
        """Checks an API key; raises UnauthenticatedError when it does not verify."""

    async def verify_miner(self, miner_id: str, api_key: str) -> MinerInfo:
        """Checks a miner's credentials; raises UnauthenticatedError when they do not verify."""

    async def account_standing(self, account_id: str) -> AccountInfo:
        """An account's current standing; NotFoundError when it does not exist."""

    async def revoke_session(self, account_id: str, session_id: str, expires_at: float) -> None:
        """Records a revoked session at Central, which announces it to every node."""

    async def session_revocations(self, lookback_s: float) -> SessionRevocations:
        """The revocations Central recorded within ``lookback_s`` seconds before now."""
