"""What may go to a DService: the node's check of a request that arrived over gRPC."""

from __future__ import annotations

import pytest

from cgn_common.errors import InvalidArgumentError
from cgn_common.http import check_request, end_to_end

OK_HEADERS = [("Accept", b"*/*"), ("X-Utf8", "naïve".encode()), ("X-Latin1", b"caf\xe9\tx")]


def _check(
    method: str = "GET",
    path: str = "/a/b%20c",
    query: str = "x=1&x=2",
    headers: list[tuple[str, bytes]] | None = None,
    body: int = 0,
) -> None:
    check_request(method, path, query, OK_HEADERS if headers is None else headers, body, 100)


def test_an_ordinary_request_passes() -> None:
    _check()
    _check(method="PROPFIND", headers=[("Content-Length", b"5")], body=5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "GE T"}, "not an HTTP token"),
        ({"method": "GET\r\n"}, "not an HTTP token"),
        ({"method": ""}, "not an HTTP token"),
        ({"method": "X" * 33}, "not an HTTP token"),
        ({"path": "relative"}, "must start with '/'"),
        ({"path": "/a\x01b"}, "path holds"),
        ({"path": "/a b"}, "path holds"),
        ({"path": "/a\rb"}, "path holds"),
        ({"path": "/café"}, "path holds"),
        ({"path": "/a?b"}, "path holds"),
        ({"query": "a=\x00"}, "query holds"),
        ({"query": "a=1#frag"}, "query holds"),
        ({"headers": [("X-A", b"one\r\nX-Injected: yes")]}, "control character"),
        ({"headers": [("X-A", b"nul\x00byte")]}, "control character"),
        ({"headers": [("X-A", b"lf\nonly")]}, "control character"),
        ({"headers": [("X A", b"v")]}, "not an HTTP token"),
        ({"headers": [("X-A\r\n", b"v")]}, "not an HTTP token"),
        ({"headers": [("X-H", b"v")] * 201}, "more than 200 headers"),
        ({"headers": [("X-H", b"v" * 70_000)]}, "headers exceed"),
        ({"body": 101}, "body exceeds 100 bytes"),
        ({"headers": [("Content-Length", b"3")], "body": 4}, "does not match"),
        ({"headers": [("Content-Length", b"4"), ("content-length", b"5")], "body": 4}, "match"),
    ],
)
def test_what_http_forbids_is_invalid_argument(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        _check(**kwargs)  # type: ignore[arg-type]
    assert message in info.value.message


def test_hop_by_hop_and_connection_named_headers_are_dropped_in_order() -> None:
    headers = [
        ("A", b"1"),
        ("Connection", b"keep-alive, X-Private"),
        ("X-Private", b"p"),
        ("Keep-Alive", b"5"),
        ("B", b"2"),
        ("a", b"3"),
        ("Transfer-Encoding", b"chunked"),
    ]
    assert end_to_end(headers) == [("A", b"1"), ("B", b"2"), ("a", b"3")]
    assert end_to_end(headers, frozenset({"b"})) == [("A", b"1"), ("a", b"3")]
    # Nothing hop-by-hop: the same headers back, in order, duplicates kept.
    clean = [("A", b"1"), ("B", b"2"), ("a", b"3")]
    assert end_to_end(clean) == clean
    assert end_to_end(clean, frozenset({"a"})) == [("B", b"2")]
