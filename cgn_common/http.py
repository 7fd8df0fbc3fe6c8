"""HTTP facts shared by the gateway, the node and the miner: which headers a proxy drops, and
what a request must look like before any DService sees it (docs/dservices.md, "Proxying")."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from cgn_common.errors import InvalidArgumentError

#: Headers that describe one connection, not the message (RFC 9110 section 7.6.1): never
#: forwarded by a proxy, in either direction. Headers named in ``Connection`` are too.
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

#: RFC 9110 token: a method or a header name.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A request target's path or query: visible ASCII only (RFC 9112 section 3.2; no space, no
#: control character, no raw non-ASCII byte: those are percent-encoded).
_TARGET = re.compile(rb"[\x21-\x7e]*")
#: A header value: no control character but HTAB (RFC 9110 section 5.5); obs-text allowed.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

#: Limits of a request's head (the gateway's HTTP parser has the same order of magnitude).
MAX_METHOD_BYTES = 32
MAX_TARGET_BYTES = 16 * 1024
MAX_HEADERS = 200
MAX_HEADER_BYTES = 64 * 1024


def connection_named(headers: Iterable[tuple[str, bytes]]) -> frozenset[str]:
    """The header names a message's ``Connection`` headers list (lower case): they are
    hop-by-hop for that message (RFC 9110 section 7.6.1)."""
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    return frozenset(named)


def end_to_end(
    headers: Sequence[tuple[str, bytes]], drop: frozenset[str] = frozenset()
) -> list[tuple[str, bytes]]:
    """``headers`` without hop-by-hop ones, those ``Connection`` names, and ``drop`` (lower
    case); order and duplicates kept."""
    names = [n.lower() for n, _ in headers]
    gone = HOP_BY_HOP | drop
    if gone.isdisjoint(names):  # the usual case: nothing to drop, no Connection to name more
        return list(headers)
    gone |= connection_named(headers)
    return [header for header, name in zip(headers, names, strict=True) if name not in gone]


def check_request(
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, bytes]],
    body_length: int,
    max_body_bytes: int,
) -> None:
    """Raises InvalidArgumentError unless the request can go to a DService as HTTP/1.1
    unchanged: a token method, a path starting with ``/`` and a query of visible ASCII, header
    names that are tokens, values without CR, LF, NUL or other control characters, a body
    within ``max_body_bytes`` and a ``Content-Length`` (if any) that matches it."""
    raw_method = method.encode("utf-8", "surrogateescape")
    if len(raw_method) > MAX_METHOD_BYTES or not _TOKEN.fullmatch(raw_method):
        raise InvalidArgumentError(f"method {method[:40]!r} is not an HTTP token")
    raw_path = path.encode("utf-8", "surrogateescape")
    raw_query = query.encode("utf-8", "surrogateescape")
    if not raw_path.startswith(b"/"):
        raise InvalidArgumentError("path must start with '/'")
    if len(raw_path) + len(raw_query) > MAX_TARGET_BYTES:
        raise InvalidArgumentError(f"path and query exceed {MAX_TARGET_BYTES} bytes")
    if not _TARGET.fullmatch(raw_path) or b"?" in raw_path or b"#" in raw_path:
        raise InvalidArgumentError(
            "path holds a character HTTP/1.1 does not allow there (control, space, non-ASCII, "
            "'?' or '#'): percent-encode it"
        )
    if not _TARGET.fullmatch(raw_query) or b"#" in raw_query:
        raise InvalidArgumentError(
            "query holds a character HTTP/1.1 does not allow (control, space, non-ASCII or '#')"
        )
    if len(headers) > MAX_HEADERS:
        raise InvalidArgumentError(f"more than {MAX_HEADERS} headers")
    total = 0
    lengths: set[bytes] = set()
    for name, value in headers:
        raw_name = name.encode("utf-8", "surrogateescape")
        if not _TOKEN.fullmatch(raw_name):
            raise InvalidArgumentError(f"header name {name[:40]!r} is not an HTTP token")
        if _BAD_VALUE.search(value):
            raise InvalidArgumentError(
                f"header {name!r} holds a control character (CR, LF, NUL or another)"
            )
        total += len(raw_name) + len(value) + 4
        if raw_name.lower() == b"content-length":
            lengths.add(value.strip())
    if total > MAX_HEADER_BYTES:
        raise InvalidArgumentError(f"headers exceed {MAX_HEADER_BYTES} bytes")
    if body_length > max_body_bytes:
        raise InvalidArgumentError(f"body exceeds {max_body_bytes} bytes")
    if lengths and lengths != {str(body_length).encode()}:
        raise InvalidArgumentError("Content-Length does not match the body")
