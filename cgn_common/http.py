"""HTTP facts shared by the gateway and the miner."""

from __future__ import annotations

#: Headers that describe one connection, not the message (RFC 9110 section 7.6.1): never
#: forwarded by a proxy, in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
