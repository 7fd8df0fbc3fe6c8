"""Identifiers and tokens."""

from __future__ import annotations

import re
import secrets

#: What a caller-supplied request id may look like (else the CGN makes one).
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def new_id(prefix: str) -> str:
    """Returns a random, unguessable id such as ``acct_3f2a...`` (128 bits)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def new_secret(prefix: str) -> str:
    """Returns a new API key or token (256 bits, URL-safe)."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"
