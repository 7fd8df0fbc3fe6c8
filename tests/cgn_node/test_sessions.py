"""Session tokens verify locally and reject tampering, expiry and revocation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from cgn_common.errors import UnauthenticatedError
from cgn_common.types import Tier
from cgn_node.sessions import (
    RevocationView,
    SessionInvalidError,
    SessionIssuer,
    SessionsUnconfirmedError,
)


def test_issued_token_verifies_with_its_claims() -> None:
    issuer = SessionIssuer(b"k" * 32, 60, "node-1")
    token, claims = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE, Tier.TIER_3_TEE])
    verified = issuer.verify(token)
    assert verified == claims
    assert verified.allowed_tiers == (Tier.TIER_1_PRIVATE, Tier.TIER_3_TEE)
    assert time.time() < verified.expires_at <= time.time() + 60


def test_other_key_tampering_and_garbage_are_rejected() -> None:
    issuer = SessionIssuer(b"k" * 32, 60, "node-1")
    token, _ = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE])
    body, signature = token.split(".")
    forged_body = body[:-1] + ("A" if body[-1] != "A" else "B")
    for bad in (f"{forged_body}.{signature}", "", ".", "abc", token + "x"):
        with pytest.raises(UnauthenticatedError):
            issuer.verify(bad)
    with pytest.raises(UnauthenticatedError):
        SessionIssuer(b"o" * 32, 60, "node-1").verify(token)


def test_expired_and_revoked_tokens_are_rejected() -> None:
    expired, _ = SessionIssuer(b"k" * 32, -1, "node-1").issue("acct_1", [Tier.TIER_1_PRIVATE])
    with pytest.raises(SessionInvalidError):
        SessionIssuer(b"k" * 32, 60, "node-1").verify(expired)
    issuer = SessionIssuer(b"k" * 32, 60, "node-1")
    token, claims = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE])
    other, _ = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE])
    issuer.revocations.session_revoked(claims.session_id, claims.expires_at)
    with pytest.raises(SessionInvalidError):
        issuer.verify(token)
    assert issuer.verify(other).account_id == "acct_1"


def test_an_epoch_revokes_older_tokens_of_that_account_only() -> None:
    issuer = SessionIssuer(b"k" * 32, 60, "node-1")
    old, _ = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE], epoch=2)
    bystander, _ = issuer.issue("acct_2", [Tier.TIER_1_PRIVATE], epoch=0)
    issuer.revocations.account_revoked("acct_1", 3)
    issuer.revocations.account_revoked("acct_1", 1)  # a late, older announcement changes nothing
    with pytest.raises(SessionInvalidError):
        issuer.verify(old)
    fresh, _ = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE], epoch=3)
    assert issuer.verify(fresh).epoch == 3
    assert issuer.verify(bystander).account_id == "acct_2"


def test_a_view_cut_off_from_central_refuses_tokens_after_its_bound() -> None:
    view = RevocationView(max_stale_s=0.2)
    issuer = SessionIssuer(b"k" * 32, 60, "node-1", view)
    token, _ = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE])
    with pytest.raises(SessionsUnconfirmedError):  # started: nothing synced yet
        issuer.verify(token)
    assert view.synced(view.sync_started())
    assert issuer.verify(token).account_id == "acct_1"
    view.unlinked()
    assert issuer.verify(token).account_id == "acct_1"  # within the bound
    deadline = time.monotonic() + 5
    while view.current and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(SessionsUnconfirmedError) as refused:
        issuer.verify(token)
    assert refused.value.reason == "SESSIONS_UNCONFIRMED"
    started = view.sync_started()
    view.unlinked()  # a link lost during the sync: that sync does not make the view current
    assert not view.synced(started)
    assert view.synced(view.sync_started())
    assert issuer.verify(token).account_id == "acct_1"


def test_a_token_carries_the_accounts_body_limit_and_older_tokens_mean_none() -> None:
    issuer = SessionIssuer(b"k" * 32, 60, "node-1")
    token, claims = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE], epoch=1, max_body_bytes=5000)
    assert claims.max_body_bytes == 5000
    assert issuer.verify(token).max_body_bytes == 5000
    # A token issued before the limit existed has no "b": no account limit beyond the node's.
    payload = {"s": "s1", "a": "acct_1", "t": [1], "e": int(time.time()) + 60, "i": 0, "v": 1}
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    signature = hmac.new(b"k" * 32, body.encode(), hashlib.sha256).digest()
    old = f"{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert issuer.verify(old).max_body_bytes == 0


def test_a_token_checked_before_is_still_refused_once_expired_or_revoked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The node keeps the claims of tokens whose signature it checked (one HMAC per token,
    not per request); expiry and revocation are still judged on every use, and the kept
    tokens are bounded."""
    issuer = SessionIssuer(b"k" * 32, 60, "node-1")
    token, claims = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE])
    assert issuer.verify(token) == claims
    assert issuer.verify(token) == claims  # from what was kept
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    with pytest.raises(SessionInvalidError):
        issuer.verify(token)
    monkeypatch.setattr(time, "time", lambda: now)
    again, again_claims = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE])
    issuer.verify(again)
    issuer.revocations.session_revoked(again_claims.session_id, again_claims.expires_at)
    with pytest.raises(SessionInvalidError):
        issuer.verify(again)
    monkeypatch.setattr("cgn_node.sessions.PARSED_TOKENS_KEPT", 3)
    small = SessionIssuer(b"k" * 32, 60, "node-1")
    for _ in range(5):
        small.verify(small.issue("acct_2", [Tier.TIER_1_PRIVATE])[0])
    assert small._claims_of.cache_info().currsize <= 3
