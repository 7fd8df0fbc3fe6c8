"""Session tokens verify locally and reject tampering, expiry and revocation."""

from __future__ import annotations

import time

import pytest

from cgn_common.errors import UnauthenticatedError
from cgn_common.types import Tier
from cgn_node.sessions import SessionIssuer


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
    with pytest.raises(UnauthenticatedError):
        SessionIssuer(b"k" * 32, 60, "node-1").verify(expired)
    issuer = SessionIssuer(b"k" * 32, 60, "node-1")
    token, _ = issuer.issue("acct_1", [Tier.TIER_1_PRIVATE])
    assert issuer.revoke(token) is True
    with pytest.raises(UnauthenticatedError):
        issuer.verify(token)
    assert issuer.revoke(token) is False
