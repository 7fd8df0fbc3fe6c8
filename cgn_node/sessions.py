"""Session tokens: issued once per ``POST /v1/sessions`` after Central checked the API key,
then verified locally on every call with one HMAC-SHA256 (microseconds, no Argon2), and
checked against the revocations Central announced (:class:`RevocationView`)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cgn_common.errors import InvalidArgumentError, UnauthenticatedError, UnavailableError
from cgn_common.types import Tier
from cgn_node.config import NodeConfig

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
    #: The account's session epoch at Central when the token was issued.
    epoch: int = 0
    #: The account's request-body limit in bytes as Central gave it at login; 0 (also in
    #: tokens issued before it existed): no account limit beyond the node's.
    max_body_bytes: int = 0


class SessionInvalidError(UnauthenticatedError):
    """A session token that is malformed, forged, expired or revoked (one message for all)."""

    reason = "SESSION_INVALID"

    def __init__(self) -> None:
        super().__init__(_INVALID)


class SessionsUnconfirmedError(UnavailableError):
    """The node has been cut off from Central too long to know whether a token was revoked."""

    reason = "SESSIONS_UNCONFIRMED"
    retry_after_s = 1.0


class RevocationView:
    """What Central last said about revoked sessions, and whether that is recent enough.

    Central is the one record of revocations (``central/revocations.py``); this view is the
    node process's copy, fed by directives on a live link and by a sync on every new link.
    While a link is up and the last sync ran on it, the view is current. When the last link
    drops, tokens are still accepted for ``max_stale_s``; after that, and after a restart
    until the first sync completes, every token is refused with 503 SESSIONS_UNCONFIRMED:
    a revocation can never be missed for longer than ``max_stale_s``.
    """

    def __init__(self, max_stale_s: float = math.inf) -> None:
        self.max_stale_s = max_stale_s
        self._epochs: dict[str, int] = {}
        #: session id -> when its token expires (wall clock); kept until then.
        self._sessions: dict[str, float] = {}
        # Monotonic time until which the view counts as current; +inf while it is synced on
        # a live link. A view that never goes stale (tests, no Central) starts current.
        self._current_until = math.inf if math.isinf(max_stale_s) else 0.0
        self._generation = 0

    def account_revoked(self, account_id: str, epoch: int) -> None:
        """Central says tokens of ``account_id`` with a lower epoch are revoked."""
        if epoch > self._epochs.get(account_id, 0):
            self._epochs[account_id] = epoch

    def session_revoked(self, session_id: str, expires_at: float) -> None:
        """Central says the session ``session_id`` is revoked."""
        now = time.time()
        if len(self._sessions) > 1024:
            self._sessions = {s: e for s, e in self._sessions.items() if e > now}
        if expires_at > now:
            self._sessions[session_id] = expires_at

    def unlinked(self) -> None:
        """The last link to Central dropped: the stale clock starts."""
        self._generation += 1
        if math.isinf(self._current_until) and not math.isinf(self.max_stale_s):
            self._current_until = time.monotonic() + self.max_stale_s

    def sync_started(self) -> int:
        """Marks the start of a sync; pass the result to :meth:`synced`."""
        return self._generation

    def synced(self, started: int) -> bool:
        """A sync that began at ``started`` completed on a live link; True when no link loss
        happened meanwhile, so the view is current again."""
        if started != self._generation:
            return False
        self._current_until = math.inf
        return True

    @property
    def current(self) -> bool:
        """True while tokens can be judged."""
        return time.monotonic() < self._current_until

    def check(self, claims: SessionClaims) -> None:
        """Raises when ``claims`` were revoked, or when that cannot be known now."""
        if not self.current:
            raise SessionsUnconfirmedError(
                "cannot confirm sessions with the central service; retry shortly"
            )
        if claims.epoch < self._epochs.get(claims.account_id, 0):
            raise SessionInvalidError()
        if claims.session_id in self._sessions:
            raise SessionInvalidError()


#: How many checked tokens a node keeps (a few hundred KiB at most).
PARSED_TOKENS_KEPT = 4096


class SessionIssuer:
    """Issues and verifies session tokens with an HMAC key shared by the node's processes."""

    def __init__(
        self,
        key: bytes,
        ttl_s: int,
        node_id: str,
        revocations: RevocationView | None = None,
    ) -> None:
        self._key = key or secrets.token_bytes(32)
        #: The claims of a token whose signature was checked (a DApp sends the same token with
        #: every request: the HMAC and JSON are paid once per token, not per request); expiry
        #: and revocation are still judged on every use.
        self._claims_of = functools.lru_cache(maxsize=PARSED_TOKENS_KEPT)(self._checked)
        self.ttl_s = ttl_s
        self._node_id = node_id
        self.revocations = revocations or RevocationView()

    def issue(
        self,
        account_id: str,
        allowed_tiers: Sequence[Tier],
        epoch: int = 0,
        max_body_bytes: int = 0,
    ) -> tuple[str, SessionClaims]:
        """Returns a new token and its claims; ``epoch`` is the account's session epoch and
        ``max_body_bytes`` its request-body limit (0: none), as Central gave them with the
        login."""
        self.revocations.account_revoked(account_id, epoch)
        claims = SessionClaims(
            session_id=secrets.token_hex(16),
            account_id=account_id,
            allowed_tiers=tuple(allowed_tiers),
            expires_at=float(int(time.time()) + self.ttl_s),
            issued_at_ms=int(time.time() * 1000),
            epoch=epoch,
            max_body_bytes=max_body_bytes,
        )
        payload = json.dumps(
            {
                "s": claims.session_id,
                "a": account_id,
                "t": [int(t) for t in claims.allowed_tiers],
                "e": int(claims.expires_at),
                "i": claims.issued_at_ms,
                "v": epoch,
                "b": max_body_bytes,
                "n": self._node_id,
            },
            separators=(",", ":"),
        ).encode()
        body = _b64(payload)
        return f"{body}.{self._sign(body)}", claims

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def verify(self, token: str) -> SessionClaims:
        """Returns the token's claims, or raises SessionInvalidError (or
        SessionsUnconfirmedError while revocations cannot be known)."""
        claims = self.parse(token)
        self.revocations.check(claims)
        return claims

    def parse(self, token: str) -> SessionClaims:
        """The claims of a genuine, unexpired token, revoked or not."""
        claims = self._claims_of(token)
        if claims.expires_at <= time.time():
            raise SessionInvalidError()
        return claims

    def _checked(self, token: str) -> SessionClaims:
        """The claims of a token whose signature holds (expired or not)."""
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
                epoch=int(data.get("v", 0)),
                max_body_bytes=int(data.get("b", 0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionInvalidError() from exc
        return claims


def session_key(config: NodeConfig) -> bytes:
    """The node's session HMAC key: from ``session_key_file`` (created with 32 random bytes,
    mode 0600, when missing), else ``session_secret``, else empty (a random key per start)."""
    if config.session_key_file:
        path = Path(config.session_key_file)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
        key = path.read_bytes()
        if len(key) < 16:
            raise InvalidArgumentError(f"session_key_file {path} holds fewer than 16 bytes")
        return key
    return config.session_secret.reveal().encode()
