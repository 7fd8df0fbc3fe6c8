"""The row hash: the canonical encoding, what it refuses, that every immutable value reaches
the hash, the XOR aggregate, and that the vectors and docs/ledger.md match the code."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgn_common.errors import InvalidArgumentError
from settlement.fixed_point import UINT256_MAX
from settlement.rowhash import (
    MAX_CUSTOM_VALUE_BYTES,
    PRIVATE_COLUMNS_V1,
    PUBLIC_COLUMNS_V1,
    REDACTED,
    ColumnType,
    custom_hash,
    encode_addresses,
    encode_custom_fields,
    encode_headers,
    encode_pairs,
    encode_private_row,
    encode_public_row,
    encode_value,
    keccak256,
    new_salt,
    private_hash,
    redact_headers,
    request_line,
    row_hash,
    xor_aggregate,
)
from tests.settlement.rowhash_vectors import DOC, VECTORS, build_vectors, worked_example

names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=45))]
)
digests = st.binary(min_size=32, max_size=32)


def values_of(column_type: ColumnType) -> st.SearchStrategy[object]:
    """Any valid value of a column type (text without surrogates: st.text never draws them)."""
    strategies: dict[ColumnType, st.SearchStrategy[object]] = {
        ColumnType.UINT: st.integers(0, UINT256_MAX),
        ColumnType.TEXT: st.text(),
        ColumnType.TIMESTAMP: st.datetimes(timezones=zones),
        ColumnType.BYTES32: digests,
        ColumnType.BYTES: st.binary(),
    }
    return strategies[column_type]


def public_rows() -> st.SearchStrategy[dict[str, object]]:
    columns = {name: values_of(t) for name, t in PUBLIC_COLUMNS_V1.items()}
    return st.fixed_dictionaries({**columns, "schema_version": st.just(1)})


def private_rows() -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries({name: values_of(t) for name, t in PRIVATE_COLUMNS_V1.items()})


def decode_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parses an encoding back into its pairs: a left inverse, which proves it injective."""
    pairs, at = [], 0
    while at < len(data):
        fields = []
        for _ in range(2):
            length = int.from_bytes(data[at : at + 4], "big")
            fields.append(data[at + 4 : at + 4 + length])
            at += 4 + length
            assert at <= len(data), "a length runs past the end"
        pairs.append((fields[0], fields[1]))
    return pairs


# --- Keccak and the value formats ---------------------------------------------------------


def test_keccak256_is_ethereums_keccak_not_nist_sha3() -> None:
    assert keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )
    assert keccak256(b"abc").hex() == (
        "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
    )
    # NIST SHA3-256 of the empty string, for contrast: a different function.
    assert keccak256(b"").hex() != (
        "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    )


@pytest.mark.parametrize(
    ("column_type", "value", "expected"),
    [
        (ColumnType.UINT, 0, "00" * 32),
        (ColumnType.UINT, 1, "00" * 31 + "01"),
        (ColumnType.UINT, 2**256 - 1, "ff" * 32),
        (ColumnType.TEXT, "", ""),
        (ColumnType.TEXT, "é", "c3a9"),
        # Not normalized: the decomposed form stays decomposed.
        (ColumnType.TEXT, "e\u0301", "65cc81"),
        (ColumnType.TEXT, "🚀", "f09f9a80"),
        (ColumnType.TIMESTAMP, datetime(1970, 1, 1, tzinfo=UTC), "00" * 8),
        (ColumnType.TIMESTAMP, datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC), "00" * 7 + "01"),
        (ColumnType.TIMESTAMP, datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "ff" * 8),
        (ColumnType.TIMESTAMP, datetime(2001, 9, 9, 1, 46, 40, tzinfo=UTC), "00038d7ea4c68000"),
        (ColumnType.BYTES32, bytes(range(32)), bytes(range(32)).hex()),
        (ColumnType.BYTES, b"", ""),
        (ColumnType.BYTES, b"\x00\xff", "00ff"),
    ],
)
def test_each_value_format(column_type: ColumnType, value: object, expected: str) -> None:
    assert encode_value(column_type, value).hex() == expected


@given(st.datetimes(datetime(2, 1, 1), datetime(9998, 12, 31)), zones)
def test_a_timestamp_is_an_instant_whatever_its_time_zone(moment: datetime, zone: timezone) -> None:
    aware = moment.replace(tzinfo=UTC)
    shifted = aware.astimezone(zone)
    assert encode_value(ColumnType.TIMESTAMP, shifted) == encode_value(ColumnType.TIMESTAMP, aware)
    micros = int.from_bytes(encode_value(ColumnType.TIMESTAMP, aware), "big", signed=True)
    assert datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros) == aware


def _valid_public_row() -> dict[str, object]:
    row: dict[str, object] = {name: 0 for name, t in PUBLIC_COLUMNS_V1.items() if t == "uint"}
    row |= {name: "" for name, t in PUBLIC_COLUMNS_V1.items() if t == "text"}
    row |= {"schema_version": 1, "finished_at": datetime(2025, 1, 1, tzinfo=UTC)}
    return row | {"private_hash": bytes(32), "custom_hash": bytes(32)}


def _with(**changes: object) -> dict[str, object]:
    return _valid_public_row() | changes


def _without(name: str) -> dict[str, object]:
    row = _valid_public_row()
    del row[name]
    return row


REFUSED: list[tuple[str, Callable[[], object]]] = [
    ("negative uint", lambda: encode_value(ColumnType.UINT, -1)),
    ("uint of 2**256", lambda: encode_value(ColumnType.UINT, 2**256)),
    ("bool as uint", lambda: encode_value(ColumnType.UINT, True)),
    ("float as uint", lambda: encode_value(ColumnType.UINT, 1.0)),
    ("naive datetime", lambda: encode_value(ColumnType.TIMESTAMP, datetime(2025, 1, 1))),
    ("int as timestamp", lambda: encode_value(ColumnType.TIMESTAMP, 0)),
    ("31-byte bytes32", lambda: encode_value(ColumnType.BYTES32, bytes(31))),
    ("33-byte bytes32", lambda: encode_value(ColumnType.BYTES32, bytes(33))),
    ("str as bytes32", lambda: encode_value(ColumnType.BYTES32, "0" * 32)),
    ("lone surrogate", lambda: encode_value(ColumnType.TEXT, "ok \ud800 no")),
    ("bytes as text", lambda: encode_value(ColumnType.TEXT, b"abc")),
    ("str as bytes", lambda: encode_value(ColumnType.BYTES, "abc")),
    ("missing column", lambda: encode_public_row(_without("row_seq"))),
    ("extra column", lambda: encode_public_row(_with(tier=1))),
    ("row_hash among the columns", lambda: encode_public_row(_with(row_hash=bytes(32)))),
    ("schema version 2", lambda: encode_public_row(_with(schema_version=2))),
    ("negative payout", lambda: encode_public_row(_with(payout_operator=-1))),
    ("naive finished_at", lambda: encode_public_row(_with(finished_at=datetime(2025, 1, 1)))),
    ("surrogate pseudonym", lambda: encode_public_row(_with(enterprise="\udc80"))),
    ("short private_hash", lambda: encode_public_row(_with(private_hash=bytes(31)))),
    ("missing private column", lambda: encode_private_row({"salt": bytes(32)})),
    ("row_hash hashed", lambda: row_hash({"row_hash": bytes(32), "row_seq": bytes(32)})),
    ("duplicate name", lambda: encode_pairs([("a", b"1"), ("b", b""), ("a", b"2")])),
    ("duplicate, same value", lambda: encode_pairs([("a", b""), ("a", b"")])),
    ("empty name", lambda: encode_pairs([("", b"")])),
    ("upper-case name", lambda: encode_pairs([("Fee", b"")])),
    ("name with a dash", lambda: encode_pairs([("fee-atto", b"")])),
    ("name starting with a digit", lambda: encode_pairs([("1fee", b"")])),
    ("non-ASCII name", lambda: encode_pairs([("café", b"")])),
    ("name of 65 characters", lambda: encode_pairs([("a" * 65, b"")])),
    ("str value", lambda: encode_pairs([("a", "b")])),  # type: ignore[list-item]
    ("custom value over 4 KiB", lambda: encode_custom_fields({"a": "x" * 4097})),
    ("custom value over 4 KiB in UTF-8", lambda: encode_custom_fields({"a": "é" * 2049})),
    ("custom name upper-case", lambda: encode_custom_fields({"Project": "x"})),
    ("custom surrogate", lambda: encode_custom_fields({"a": "\ud800"})),
    ("custom salt of 31 bytes", lambda: custom_hash({}, bytes(31))),
    ("19-byte address", lambda: encode_addresses({"enterprise": bytes(19)})),
    ("unredacted authorization", lambda: encode_headers([("authorization", b"Bearer x")])),
    ("unredacted cookie", lambda: encode_headers([("COOKIE", b"a=b")])),
    ("31-byte hash in the XOR", lambda: xor_aggregate([bytes(32), bytes(31)])),
]


@pytest.mark.parametrize("call", [c for _, c in REFUSED], ids=[i for i, _ in REFUSED])
def test_refused(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgumentError):
        call()


def test_the_limits_themselves_are_accepted() -> None:
    assert encode_custom_fields({"a": "x" * MAX_CUSTOM_VALUE_BYTES})
    assert encode_pairs([("a" * 64, b"")])
    assert encode_public_row(_with(row_seq=UINT256_MAX))


def test_an_error_names_the_column() -> None:
    with pytest.raises(InvalidArgumentError, match="column payout_operator"):
        encode_public_row(_with(payout_operator=-1))
    with pytest.raises(InvalidArgumentError, match=r"missing \['row_seq'\], unknown \[\]"):
        encode_public_row(_without("row_seq"))


# --- The pair encoding --------------------------------------------------------------------


def test_the_pair_encoding_byte_by_byte() -> None:
    # Names sort by bytes: "a" < "a_b" < "ab" ("_" is 0x5f, "b" 0x62).
    encoded = encode_pairs([("ab", b""), ("a", b"\x01"), ("a_b", b"xy")])
    assert encoded.hex() == (
        "00000001" + "61" + "00000001" + "01"
        "00000003" + "615f62" + "00000002" + "7879"
        "00000002" + "6162" + "00000000"
    )
    assert encode_pairs([]) == b""


@given(st.dictionaries(names, st.binary()))
def test_the_encoding_parses_back_into_its_pairs(pairs: dict[str, bytes]) -> None:
    decoded = decode_pairs(encode_pairs(pairs.items()))
    assert decoded == sorted((n.encode(), v) for n, v in pairs.items())


@given(st.dictionaries(names, st.binary()), st.dictionaries(names, st.binary()))
def test_different_pairs_never_encode_alike(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert (encode_pairs(a.items()) == encode_pairs(b.items())) == (a == b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # A byte moved from the name into the value.
        ({"ab": b"c"}, {"a": b"bc"}),
        # A byte moved between adjacent pairs.
        ({"a": b"xy", "b": b""}, {"a": b"x", "b": b"y"}),
        # An empty value is not a missing pair.
        ({"a": b"", "b": b"1"}, {"b": b"1"}),
        # A value that holds the encoding of another pair.
        ({"a": b"\x00\x00\x00\x01b\x00\x00\x00\x00"}, {"a": b"", "b": b""}),
        # Swapped values.
        ({"a": b"1", "b": b"2"}, {"a": b"2", "b": b"1"}),
    ],
)
def test_tricky_neighbours_encode_differently(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert encode_pairs(a.items()) != encode_pairs(b.items())
    assert row_hash(a) != row_hash(b)


def test_the_order_given_does_not_matter() -> None:
    pairs = [("b", b"2"), ("a", b"1"), ("c", b"3")]
    assert encode_pairs(pairs) == encode_pairs(reversed(pairs)) == encode_pairs(sorted(pairs))
    assert row_hash(dict(pairs)) == row_hash(dict(sorted(pairs)))


# --- Every immutable value reaches the row hash --------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLIC_COLUMNS_V1.keys() - {"schema_version"}))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_changing_any_public_value_changes_the_row_hash(name: str, data: st.DataObject) -> None:
    row = data.draw(public_rows())
    new = data.draw(values_of(PUBLIC_COLUMNS_V1[name]).filter(lambda v: v != row[name]))
    before = row_hash(encode_public_row(row))
    assert row_hash(encode_public_row({**row, name: new})) != before


@pytest.mark.parametrize("name", sorted(PUBLIC_COLUMNS_V1))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_changing_any_encoded_public_value_changes_the_row_hash(
    name: str, data: st.DataObject
) -> None:
    # Also the schema version, which encode_public_row only accepts as 1: a verifier hashes
    # the bytes the view gives it.
    encoded = encode_public_row(data.draw(public_rows()))
    new = data.draw(st.binary().filter(lambda v: v != encoded[name]))
    assert row_hash({**encoded, name: new}) != row_hash(encoded)


def _public_hash_with_private(private: dict[str, object]) -> bytes:
    return row_hash(
        encode_public_row(_with(private_hash=private_hash(encode_private_row(private))))
    )


@pytest.mark.parametrize("name", sorted(PRIVATE_COLUMNS_V1))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_changing_any_private_value_changes_the_row_hash(name: str, data: st.DataObject) -> None:
    row = data.draw(private_rows())
    new = data.draw(values_of(PRIVATE_COLUMNS_V1[name]).filter(lambda v: v != row[name]))
    before = _public_hash_with_private(row)
    assert _public_hash_with_private({**row, name: new}) != before


headers = st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True), st.binary()))


@given(headers, headers)
def test_different_header_lists_encode_differently(
    a: list[tuple[str, bytes]], b: list[tuple[str, bytes]]
) -> None:
    a, b = list(redact_headers(a)), list(redact_headers(b))
    assert (encode_headers(a) == encode_headers(b)) == (a == b)
    decoded = decode_pairs(encode_headers(a))
    assert decoded == [(n.encode(), v) for n, v in a]


def test_header_order_and_repeats_are_kept() -> None:
    one = [("X-Trace", b"a"), ("X-Trace", b"b")]
    assert encode_headers(one) != encode_headers(list(reversed(one)))
    assert encode_headers(one) != encode_headers(one[:1])


@given(st.dictionaries(names, st.binary(min_size=20, max_size=20)), names, digests)
def test_changing_an_address_changes_its_column(
    addresses: dict[str, bytes], entity: str, other: bytes
) -> None:
    changed = {**addresses, entity: other[:20]}
    assert (encode_addresses(changed) == encode_addresses(addresses)) == (changed == addresses)


custom_fields = st.dictionaries(names, st.text(max_size=50), max_size=5)


@given(custom_fields, custom_fields, digests, digests)
def test_changing_any_custom_field_or_the_salt_changes_the_row_hash(
    a: dict[str, str], b: dict[str, str], salt_a: bytes, salt_b: bytes
) -> None:
    hash_a = row_hash(encode_public_row(_with(custom_hash=custom_hash(a, salt_a))))
    hash_b = row_hash(encode_public_row(_with(custom_hash=custom_hash(b, salt_b))))
    assert (hash_a == hash_b) == (a == b and salt_a == salt_b)


def test_custom_hash_of_no_fields() -> None:
    salt = bytes(range(32))
    expected = encode_pairs([("fields", b""), ("salt", salt)])
    assert custom_hash({}, salt) == keccak256(expected)


def test_a_salt_is_fresh_each_time() -> None:
    salts = {new_salt() for _ in range(100)}
    assert len(salts) == 100
    assert all(len(s) == 32 for s in salts)


# --- Redaction and the request line --------------------------------------------------------


def test_redact_headers_replaces_credentials_case_insensitively_and_keeps_the_rest() -> None:
    given_headers = [
        ("Host", b"api.example"),
        ("Authorization", b"Bearer secret-token"),
        ("cookie", b"session=1"),
        ("PROXY-AUTHORIZATION", b"Basic eDp5"),
        ("Set-Cookie", b"a=b"),
        ("Set-Cookie", b"c=d"),
        ("x-cgn-session", b"the-cgn-session-token"),
        ("X-Authorization-Hint", b"not a credential"),
    ]
    assert redact_headers(given_headers) == (
        ("Host", b"api.example"),
        ("Authorization", REDACTED),
        ("cookie", REDACTED),
        ("PROXY-AUTHORIZATION", REDACTED),
        ("Set-Cookie", REDACTED),
        ("Set-Cookie", REDACTED),
        ("x-cgn-session", REDACTED),
        ("X-Authorization-Hint", b"not a credential"),
    )
    assert REDACTED == b"[redacted]"
    encoded = encode_headers(redact_headers(given_headers))
    assert b"secret-token" not in encoded
    assert b"session=1" not in encoded


def test_request_line() -> None:
    assert request_line("GET", "/v1/x", "") == "GET /v1/x"
    assert request_line("POST", "/v1/render", "a=1&b=2") == "POST /v1/render?a=1&b=2"


# --- The XOR aggregate ---------------------------------------------------------------------


def test_the_aggregate_of_nothing_is_zero() -> None:
    assert xor_aggregate([]) == bytes(32)


@given(st.lists(digests), st.data())
def test_the_aggregate_is_independent_of_order_and_grouping(
    hashes: list[bytes], data: st.DataObject
) -> None:
    whole = xor_aggregate(hashes)
    shuffled = data.draw(st.permutations(hashes))
    assert xor_aggregate(shuffled) == whole
    cuts = sorted(data.draw(st.lists(st.integers(0, len(hashes)), max_size=4)))
    bounds = [0, *cuts, len(hashes)]
    groups = [hashes[i:j] for i, j in pairwise(bounds)]
    assert xor_aggregate(xor_aggregate(g) for g in groups) == whole


@given(digests)
def test_a_row_twice_cancels_which_is_why_row_ids_are_unique(digest: bytes) -> None:
    assert xor_aggregate([digest, digest]) == bytes(32)


# --- The vectors and the doc ---------------------------------------------------------------


def test_the_vector_file_matches_the_code() -> None:
    assert json.loads(VECTORS.read_text()) == build_vectors()


def test_the_worked_example_in_the_doc_matches_the_code() -> None:
    assert worked_example(build_vectors()) in DOC.read_text()


def _doc_table(heading: str) -> dict[str, str]:
    section = DOC.read_text().split(heading, 1)[1].split("\n### ", 1)[0]
    return dict(re.findall(r"^\| `([a-z0-9_]+)` \| (\w+) \|", section, re.M))


def test_the_doc_lists_the_v1_columns_with_their_types() -> None:
    assert _doc_table("### Public columns, schema version 1") == dict(PUBLIC_COLUMNS_V1)
    assert _doc_table("### The private hash") == dict(PRIVATE_COLUMNS_V1)
