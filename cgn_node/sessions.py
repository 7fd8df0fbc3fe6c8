"""Session tokens: issued once per ``POST /v1/sessions`` after Central checked the API key,
then verified locally on every call with one HMAC-SHA256 (microseconds, no Argon2)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cgn_common.errors import UnauthenticatedError
from cgn_common.types import Tier

_INVALID = "invalid or expired session token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SessionClaims:
    """What a valid token says."""

    session_id: str
    account_id: str
    allowed_tiers: tuple[Tier, ...]
    expires_at: float
    issued_at_ms: int = 0


class SessionInvalidError(UnauthenticatedError):
    """A session token that is malformed, forged, expired or revoked (one message for all)."""

    reason = "SESSION_INVALID"

    def __init__(self) -> None:
        super().__init__(_INVALID)


class SessionIssuer:
    """Issues and verifies session tokens with an HMAC key shared by the node's processes."""

    def __init__(self, key: bytes, ttl_s: int, node_id: str) -> None:
        self._key = key or secrets.token_bytes(32)
        self._ttl_s = ttl_s
        self._node_id = node_id
        self._revoked: dict[str, float] = {}
        #: account -> latest expiry of a token issued here (so standing can be re-checked).
        self._issued: dict[str, float] = {}
        #: account -> tokens issued before this time (ms) are refused.
        self._not_before_ms: dict[str, int] = {}

    def issue(self, account_id: str, allowed_tiers: Sequence[Tier]) -> tuple[str, SessionClaims]:
        """Returns a new token and its claims."""
        claims = SessionClaims(
            session_id=secrets.token_hex(8),
            account_id=account_id,
            allowed_tiers=tuple(allowed_tiers),
            expires_at=float(int(time.time()) + self._ttl_s),
            issued_at_ms=int(time.time() * 1000),
        )
        self._issued[account_id] = claims.expires_at
        payload = json.dumps(
            {
                "s": claims.session_id,
                "a": account_id,
                "t": [int(t) for t in claims.allowed_tiers],
                "e": int(claims.expires_at),
                "i": claims.issued_at_ms,
                "n": self._node_id,
            },
            separators=(",", ":"),
        ).encode()
        body = _b64(payload)
        return f"{body}.{self._sign(body)}", claims

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def verify(self, token: str) -> SessionClaims:
        """Returns the token's claims, or raises UnauthenticatedError."""
        body, _, signature = token.partition(".")
        if not body or not signature or not hmac.compare_digest(signature, self._sign(body)):
            raise SessionInvalidError()
        try:
            data = json.loads(_unb64(body))
            claims = SessionClaims(
                session_id=str(data["s"]),
                account_id=str(data["a"]),
                allowed_tiers=tuple(Tier(t) for t in data["t"]),
                expires_at=float(data["e"]),
                issued_at_ms=int(data.get("i", 0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionInvalidError() from exc
        now = time.time()
        if claims.expires_at <= now or claims.session_id in self._revoked:
            raise SessionInvalidError()
        if claims.issued_at_ms < self._not_before_ms.get(claims.account_id, 0):
            raise SessionInvalidError()
        return claims

    def accounts_with_sessions(self) -> list[str]:
        """Accounts holding an unexpired token issued by this process."""
        now = time.time()
        self._issued = {a: e for a, e in self._issued.items() if e > now}
        return list(self._issued)

    def revoke_account(self, account_id: str) -> None:
        """Refuses every token of ``account_id`` issued until now."""
        now_ms = int(time.time() * 1000)
        horizon = now_ms - self._ttl_s * 1000  # older marks only refuse expired tokens
        self._not_before_ms = {a: t for a, t in self._not_before_ms.items() if t > horizon}
        self._not_before_ms[account_id] = now_ms + 1
        self._issued.pop(account_id, None)

    def revoke(self, token: str) -> bool:
        """Revokes a valid token; True when it was valid."""
        try:
            claims = self.verify(token)
        except UnauthenticatedError:
            return False
        now = time.time()
        self._revoked = {s: e for s, e in self._revoked.items() if e > now}
        self._revoked[claims.session_id] = claims.expires_at
        return True
