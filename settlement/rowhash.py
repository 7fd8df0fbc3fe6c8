"""The row hash of the microtransaction ledger (SPEC sections 8 and 15): one canonical byte
encoding of a row that anyone can recompute without our code (docs/ledger.md, "Row hash").

A set of name/value pairs encodes, in ascending byte order of the names, as
``u32be(len(name)) || name || u32be(len(value)) || value`` for each pair, nothing else. A
value's bytes are fixed by its column's :class:`ColumnType`. The row hash is the Keccak-256 of
the encoding of the public columns; the private immutable columns enter it through
``private_hash`` and the enterprise's custom fields through ``custom_hash``, each the Keccak-256
of the same encoding over its own pairs, blinded by a random salt so that the public hash
gives nobody a way to test guesses of private values. A set of rows aggregates to the XOR of
their hashes.

Keccak-256 here is the original Keccak as Ethereum and Solidity's ``keccak256`` use it, not
NIST SHA3-256 (which pads differently): pycryptodome's ``Crypto.Hash.keccak``, a declared
dependency, rather than ``eth_hash``, which arrives through web3 and picks its backend at run
time (the outsider's test in tests/settlement uses it, as a second implementation).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType

from tiny_keccak import keccak256 as _keccak256  # Rust tiny-keccak: docs/ledger.md

from cgn_common.errors import InvalidArgumentError
from settlement.fixed_point import UINT256_MAX

#: The version of :data:`PUBLIC_COLUMNS_V1` and :data:`PRIVATE_COLUMNS_V1`: the value of every
#: v1 row's ``schema_version`` column. Any change of columns or formats is a new version.
SCHEMA_VERSION = 1
#: The column that holds the row hash; never among the hashed pairs.
HASH_COLUMN = "row_hash"
#: Bytes in a Keccak-256 digest, a ``bytes32`` value and a salt.
HASH_BYTES = 32
#: The longest column, field or entity name.
MAX_NAME_BYTES = 64
#: The longest value of one enterprise custom field, in UTF-8 bytes (SPEC 8: "a few KB").
MAX_CUSTOM_VALUE_BYTES = 4096
#: Bytes in an Ethereum address.
ADDRESS_BYTES = 20

_U32_MAX = 2**32 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class ColumnType(StrEnum):
    """How a column's value becomes bytes (docs/ledger.md, "Value formats")."""

    #: An unsigned integer below 2**256, as 32 bytes big-endian (Solidity's ``abi.encode``).
    UINT = "uint"
    #: A string as its UTF-8 bytes, as given (no normalization), without terminator.
    TEXT = "text"
    #: An aware datetime as microseconds since 1970-01-01T00:00:00Z, 8 bytes big-endian signed.
    TIMESTAMP = "timestamp"
    #: Exactly 32 raw bytes (a hash or a salt).
    BYTES32 = "bytes32"
    #: Raw bytes of any length (private columns only: nested encodings).
    BYTES = "bytes"


def _uint(value: object) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT256_MAX:
        raise InvalidArgumentError(f"a uint must be an integer in [0, 2**256), got {value!r}")
    return value.to_bytes(32, "big")


def _text(value: object) -> bytes:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"text must be a str, got {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:
        # A lone surrogate: not a Unicode scalar value, so it has no UTF-8 form.
        raise InvalidArgumentError(
            f"text must be valid UTF-8: {error.reason} at index {error.start}"
        ) from None


def _timestamp(value: object) -> bytes:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidArgumentError("a timestamp must be a datetime with a time zone")
    # Every datetime (years 1 to 9999) is within a signed 64-bit count of microseconds.
    return ((value - _EPOCH) // _MICROSECOND).to_bytes(8, "big", signed=True)


def _bytes32(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_BYTES:
        raise InvalidArgumentError(f"a bytes32 value must be exactly {HASH_BYTES} bytes")
    return bytes(value)


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise InvalidArgumentError(f"a bytes value must be bytes, got {type(value).__name__}")
    return bytes(value)


_ENCODERS: Mapping[ColumnType, Callable[[object], bytes]] = {
    ColumnType.UINT: _uint,
    ColumnType.TEXT: _text,
    ColumnType.TIMESTAMP: _timestamp,
    ColumnType.BYTES32: _bytes32,
    ColumnType.BYTES: _bytes,
}


def encode_value(column_type: ColumnType, value: object) -> bytes:
    """The bytes of ``value`` in the format of ``column_type``; InvalidArgumentError when it does
    not fit (a negative uint, a naive datetime, a lone surrogate, a 31-byte bytes32...)."""
    return _ENCODERS[column_type](value)


#: Schema version 1 of the public columns (docs/ledger.md has each one's meaning). Pseudonyms
#: are opaque per-entity ids, "" when there is none; amounts are atto-CPUcoin unless named
#: ``_fiat_nano``; the six payouts sum to ``fee_atto`` (``settlement.split.Payouts``).
PUBLIC_COLUMNS_V1: Mapping[str, ColumnType] = MappingProxyType(
    {
        "schema_version": ColumnType.UINT,
        "ledger_id": ColumnType.TEXT,
        "row_seq": ColumnType.UINT,
        "finished_at": ColumnType.TIMESTAMP,
        "outcome": ColumnType.TEXT,
        "enterprise": ColumnType.TEXT,
        "end_user": ColumnType.TEXT,
        "contributor": ColumnType.TEXT,
        "developer": ColumnType.TEXT,
        "node_operator": ColumnType.TEXT,
        "contributor_charity": ColumnType.TEXT,
        "developer_charity": ColumnType.TEXT,
        "operator_charity": ColumnType.TEXT,
        "currency": ColumnType.TEXT,
        "fee_fiat_nano": ColumnType.UINT,
        "fee_atto": ColumnType.UINT,
        "payout_contributor": ColumnType.UINT,
        "payout_contributor_charity": ColumnType.UINT,
        "payout_developer": ColumnType.UINT,
        "payout_developer_charity": ColumnType.UINT,
        "payout_operator": ColumnType.UINT,
        "payout_operator_charity": ColumnType.UINT,
        "rate_nano_per_coin": ColumnType.UINT,
        "private_hash": ColumnType.BYTES32,
        "custom_hash": ColumnType.BYTES32,
    }
)

#: Schema version 1 of the private immutable columns, hashed into ``private_hash``. Times in
#: microseconds, sizes in bytes; ``salt`` is 32 random bytes per row (:func:`new_salt`).
PRIVATE_COLUMNS_V1: Mapping[str, ColumnType] = MappingProxyType(
    {
        "salt": ColumnType.BYTES32,
        "request_id": ColumnType.TEXT,
        "dservice": ColumnType.TEXT,
        "request_line": ColumnType.TEXT,
        "request_headers": ColumnType.BYTES,
        "dservice_fields": ColumnType.BYTES,
        "eth_addresses": ColumnType.BYTES,
        "total_time_us": ColumnType.UINT,
        "execution_time_us": ColumnType.UINT,
        "network_latency_us": ColumnType.UINT,
        "cpu_time_us": ColumnType.UINT,
        "gpu_time_us": ColumnType.UINT,
        "bytes_in": ColumnType.UINT,
        "bytes_out": ColumnType.UINT,
        "attempts": ColumnType.UINT,
        "status_code": ColumnType.UINT,
    }
)


def keccak256(data: bytes) -> bytes:
    """Keccak-256 of ``data`` (Ethereum's, not NIST SHA3-256)."""
    return _keccak256(data)


@lru_cache(maxsize=4096)
def _name_prefix(name: str) -> bytes:
    """``u32be(len(name)) || name`` for a valid name (cached: the column names repeat)."""
    if not isinstance(name, str) or len(name) > MAX_NAME_BYTES or not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            "a name must be lower-case ASCII snake_case (a letter, then letters, digits or _)"
            f" of at most {MAX_NAME_BYTES} characters, got {name!r}"
        )
    return len(name).to_bytes(4, "big") + name.encode("ascii")


@lru_cache(maxsize=256)
def _heads(names: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    """The names in hashing order, each with its prefix (cached: a ledger's rows all have the
    same names). For ASCII, str order is byte order; UTF-8 keeps code point order anyway."""
    return tuple((name, _name_prefix(name)) for name in sorted(names))


def _encode_mapping(values: Mapping[str, bytes]) -> bytes:
    parts: list[bytes] = []
    for name, head in _heads(tuple(values)):
        value = values[name]
        if not isinstance(value, bytes) or len(value) > _U32_MAX:
            raise InvalidArgumentError(f"the value of {name!r} must be bytes below 4 GiB")
        parts += (head, len(value).to_bytes(4, "big"), value)
    return b"".join(parts)


def encode_pairs(pairs: Iterable[tuple[str, bytes]]) -> bytes:
    """The canonical encoding of name/value pairs: in ascending byte order of the names,
    ``u32be(len(name)) || name || u32be(len(value)) || value`` each, concatenated.

    Names are lower-case ASCII snake_case; a name given twice is refused.
    """
    values: dict[str, bytes] = {}
    for name, value in pairs:
        if name in values:
            raise InvalidArgumentError(f"the name {name!r} appears twice")
        values[name] = value
    return _encode_mapping(values)


#: Each table's columns in hashing order, with the encoder of their type.
_Plan = tuple[tuple[str, Callable[[object], bytes]], ...]


def _plan(columns: Mapping[str, ColumnType]) -> _Plan:
    return tuple((name, _ENCODERS[columns[name]]) for name in sorted(columns))


_PUBLIC_PLAN = _plan(PUBLIC_COLUMNS_V1)
_PRIVATE_PLAN = _plan(PRIVATE_COLUMNS_V1)


def _encode_columns(what: str, plan: _Plan, values: Mapping[str, object]) -> dict[str, bytes]:
    if len(values) != len(plan) or any(name not in values for name, _ in plan):
        expected = {name for name, _ in plan}
        raise InvalidArgumentError(
            f"{what} needs exactly the v{SCHEMA_VERSION} columns:"
            f" missing {sorted(expected - values.keys())},"
            f" unknown {sorted(values.keys() - expected)}"
        )
    encoded: dict[str, bytes] = {}
    for name, encoder in plan:
        try:
            encoded[name] = encoder(values[name])
        except InvalidArgumentError as error:
            raise InvalidArgumentError(f"{what}, column {name}: {error.message}") from None
    return encoded


def encode_public_row(values: Mapping[str, object]) -> dict[str, bytes]:
    """Each public column's bytes, in hashing order, from its typed value (``int``, ``str``,
    aware ``datetime``, ``bytes``). Exactly the names of :data:`PUBLIC_COLUMNS_V1`, with
    ``schema_version`` 1. Row semantics (outcome names, payouts summing to the fee) are the
    ledger's to check: this is the encoding alone."""
    encoded = _encode_columns("a public row", _PUBLIC_PLAN, values)
    if values["schema_version"] != SCHEMA_VERSION:
        raise InvalidArgumentError(
            f"these are the columns of schema version {SCHEMA_VERSION},"
            f" got schema_version {values['schema_version']!r}"
        )
    return encoded


def encode_private_row(values: Mapping[str, object]) -> dict[str, bytes]:
    """Each private immutable column's bytes, in hashing order: exactly the names of
    :data:`PRIVATE_COLUMNS_V1`."""
    return _encode_columns("a private row", _PRIVATE_PLAN, values)


def row_hash(encoded: Mapping[str, bytes]) -> bytes:
    """Keccak-256 of the encoding of a row's public columns (name to bytes as hashed, e.g. from
    :func:`encode_public_row` or the public view); ``row_hash`` itself must not be among them."""
    if HASH_COLUMN in encoded:
        raise InvalidArgumentError(f"the {HASH_COLUMN} column is never hashed: leave it out")
    return keccak256(_encode_mapping(encoded))


def private_hash(encoded: Mapping[str, bytes]) -> bytes:
    """The public ``private_hash`` column: Keccak-256 of the encoding of the private immutable
    columns (from :func:`encode_private_row`)."""
    return keccak256(_encode_mapping(encoded))


def encode_custom_fields(fields: Mapping[str, str]) -> bytes:
    """The encoding of an enterprise's custom fields: each name to its value's UTF-8 bytes,
    each value at most :data:`MAX_CUSTOM_VALUE_BYTES`."""
    pairs: list[tuple[str, bytes]] = []
    for name, value in fields.items():
        try:
            raw = _text(value)
        except InvalidArgumentError as error:
            raise InvalidArgumentError(f"custom field {name!r}: {error.message}") from None
        if len(raw) > MAX_CUSTOM_VALUE_BYTES:
            raise InvalidArgumentError(
                f"custom field {name!r} is {len(raw)} bytes, over {MAX_CUSTOM_VALUE_BYTES}"
            )
        pairs.append((name, raw))
    return encode_pairs(pairs)


def custom_hash(fields: Mapping[str, str], salt: bytes) -> bytes:
    """The public ``custom_hash`` column: Keccak-256 of the encoding of two pairs, ``fields``
    (:func:`encode_custom_fields`) and ``salt`` (32 random bytes stored with the fields)."""
    return keccak256(
        encode_pairs([("fields", encode_custom_fields(fields)), ("salt", _bytes32(salt))])
    )


def new_salt() -> bytes:
    """32 random bytes to blind a private or custom hash; drawn once per row and stored."""
    return secrets.token_bytes(HASH_BYTES)


def xor_aggregate(hashes: Iterable[bytes]) -> bytes:
    """The aggregate hash of a set of rows: the XOR of their 32-byte row hashes, independent of
    order and grouping (32 zero bytes for no rows)."""
    total = 0
    for digest in hashes:
        if len(digest) != HASH_BYTES:
            raise InvalidArgumentError(f"a row hash is {HASH_BYTES} bytes, got {len(digest)}")
        total ^= int.from_bytes(digest, "big")
    return total.to_bytes(HASH_BYTES, "big")


#: Request headers that carry credentials (compared case-insensitively); the CGN's own
#: session token travels in ``X-CGN-Session`` or ``Authorization`` (docs/dservices.md). Their
#: values are stored as :data:`REDACTED`.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "set-cookie", "x-cgn-session"}
)
#: What a credential header's value is replaced with.
REDACTED = b"[redacted]"


def redact_headers(headers: Iterable[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    """``headers`` in order, with the value of every credential header replaced by
    :data:`REDACTED`."""
    return tuple(
        (name, REDACTED if name.lower() in CREDENTIAL_HEADERS else value) for name, value in headers
    )


def encode_headers(headers: Iterable[tuple[str, bytes]]) -> bytes:
    """The ``request_headers`` column: for each header in the order received,
    ``u32be(len(name)) || name || u32be(len(value)) || value`` (name in UTF-8 as received,
    value raw). A credential header must already be redacted (:func:`redact_headers`)."""
    parts: list[bytes] = []
    for name, value in headers:
        if name.lower() in CREDENTIAL_HEADERS and value != REDACTED:
            raise InvalidArgumentError(f"header {name!r} carries a credential: redact it first")
        raw_name, raw_value = _text(name), _bytes(value)
        if len(raw_name) > _U32_MAX or len(raw_value) > _U32_MAX:
            raise InvalidArgumentError(f"header {name!r} is over 4 GiB")
        parts += (len(raw_name).to_bytes(4, "big"), raw_name)
        parts += (len(raw_value).to_bytes(4, "big"), raw_value)
    return b"".join(parts)


def encode_addresses(addresses: Mapping[str, bytes]) -> bytes:
    """The ``eth_addresses`` column: the pair encoding of entity name to its 20-byte address."""
    for entity, address in addresses.items():
        if not isinstance(address, bytes) or len(address) != ADDRESS_BYTES:
            raise InvalidArgumentError(f"the address of {entity!r} must be {ADDRESS_BYTES} bytes")
    return encode_pairs(addresses.items())


def request_line(method: str, path: str, query: str) -> str:
    """The ``request_line`` column: ``METHOD SP path``, then ``?query`` when there is a query."""
    return f"{method} {path}?{query}" if query else f"{method} {path}"
