"""The row hash test vectors (tests/settlement/row_hash_vectors.json) and the worked example of
docs/ledger.md, both made from the inputs below by the code in settlement/rowhash.py.

The tests check that the committed file and the doc still match what the code computes.
After a deliberate change of the inputs (never of the encoding: that is a new schema version),
rewrite both with ``.venv/bin/python -m tests.settlement.rowhash_vectors``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from settlement.fixed_point import UINT256_MAX
from settlement.rowhash import (
    PRIVATE_COLUMNS_V1,
    PUBLIC_COLUMNS_V1,
    ColumnType,
    custom_hash,
    encode_addresses,
    encode_custom_fields,
    encode_headers,
    encode_pairs,
    encode_private_row,
    encode_public_row,
    keccak256,
    private_hash,
    redact_headers,
    request_line,
    row_hash,
    xor_aggregate,
)
from settlement.split import DEFAULT_FEE_AGREEMENT, CharityChoices, split_fee

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "settlement" / "row_hash_vectors.json"
DOC = ROOT / "docs" / "ledger.md"
EXAMPLE_BEGIN = "<!-- row-hash-example:begin (tests/settlement/rowhash_vectors.py writes this) -->"
EXAMPLE_END = "<!-- row-hash-example:end -->"

Json = dict[str, Any]


def _address(label: str) -> bytes:
    """A made-up 20-byte address, reproducible from its label."""
    return keccak256(label.encode())[-20:]


def _payouts(fee_atto: int, charity: CharityChoices) -> dict[str, int]:
    p = split_fee(fee_atto, DEFAULT_FEE_AGREEMENT, charity)
    return {
        "payout_contributor": p.contributor,
        "payout_contributor_charity": p.contributor_charity,
        "payout_developer": p.developer,
        "payout_developer_charity": p.developer_charity,
        "payout_operator": p.operator,
        "payout_operator_charity": p.operator_charity,
    }


# Each row: a note, the public values but the two hashes, the private inputs and the custom
# fields with their salt. Row 1 is the worked example of docs/pricing.md, recorded.
ROWS: list[Json] = [
    {
        "note": "A delivered request: the worked example of docs/pricing.md as a ledger row.",
        "public": {
            "schema_version": 1,
            "ledger_id": "node-eu-1",
            "row_seq": 42,
            "finished_at": datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC),
            "outcome": "delivered",
            "enterprise": "ent-7f3a9c",
            "end_user": "usr-51d0e2",
            "contributor": "opr-c0ffee",
            "developer": "dev-2b7e15",
            "node_operator": "nop-9d1c44",
            "contributor_charity": "chr-41b7aa",
            "developer_charity": "",
            "operator_charity": "chr-41b7aa",
            "currency": "EUR",
            "fee_fiat_nano": 1_595,
            "fee_atto": 31_900_000_000_000,
            **_payouts(31_900_000_000_000, CharityChoices(100_000, 0, 50_000)),
            "rate_nano_per_coin": 50_000_000,
        },
        "private": {
            "salt": bytes(range(32)),
            "request_id": "req-5c0b1e7d",
            "dservice": "mediagen",
            "method": "POST",
            "path": "/v1/render",
            "query": "format=png&w=640",
            "headers": [
                ("Host", b"api.cgn.example"),
                ("Authorization", b"Bearer s3cr3t-session-token"),
                ("Content-Type", b"text/plain"),
                ("X-Trace", b"a"),
                ("X-Trace", b"b"),
            ],
            "dservice_fields": {"frames": b"1", "canvas": b"640x480"},
            "eth_addresses": {
                "enterprise": _address("enterprise"),
                "contributor": _address("contributor"),
                "developer": _address("developer"),
                "node_operator": _address("node_operator"),
                "contributor_charity": _address("charity"),
                "operator_charity": _address("charity"),
            },
            "total_time_us": 61_250_000,
            "execution_time_us": 60_900_000,
            "network_latency_us": 350_000,
            "cpu_time_us": 60_000_000,
            "gpu_time_us": 0,
            "bytes_in": 200_000,
            "bytes_out": 1_800_000,
            "attempts": 1,
            "status_code": 200,
        },
        "custom": {
            "fields": {"project": "spring-campaign", "cost_center": "marketing"},
            "salt": keccak256(b"custom salt 1"),
        },
    },
    {
        "note": "Abandoned by the DApp and billed for what it used; a time zone other than UTC"
        " (the instant counts), UTF-8 beyond ASCII, every charity set.",
        "public": {
            "schema_version": 1,
            "ledger_id": "node-us-2",
            "row_seq": 1,
            "finished_at": datetime(
                2024, 2, 29, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-5))
            ),
            "outcome": "abandoned",
            "enterprise": "ent-0001",
            "end_user": "",
            "contributor": "opr-Zoë",
            "developer": "dev-東京",
            "node_operator": "nop-🚀",
            "contributor_charity": "chr-a",
            "developer_charity": "chr-b",
            "operator_charity": "chr-c",
            "currency": "USD",
            "fee_fiat_nano": 123_456_789,
            "fee_atto": 2_469_135_780_000_000_000,
            **_payouts(2_469_135_780_000_000_000, CharityChoices(333_333, 500_000, 1_000_000)),
            "rate_nano_per_coin": 50_000_000,
        },
        "private": {
            "salt": keccak256(b"private salt 2"),
            "request_id": "my-own-id-00042",
            "dservice": "echo",
            "method": "GET",
            "path": "/v1/echo/caf%C3%A9",
            "query": "",
            "headers": [
                ("cookie", b"session=abc"),
                ("Accept", b"*/*"),
                ("X-Binary", bytes([0, 255, 10, 13])),
            ],
            "dservice_fields": {"note": "Zürich".encode()},
            "eth_addresses": {"enterprise": _address("enterprise 2")},
            "total_time_us": 2_000_000,
            "execution_time_us": 1_999_000,
            "network_latency_us": 1_000,
            "cpu_time_us": 1_700_000,
            "gpu_time_us": 250_000,
            "bytes_in": 0,
            "bytes_out": 65_536,
            "attempts": 2,
            "status_code": 499,
        },
        "custom": {
            "fields": {"city": "Zürich 🚀", "a": "", "a_b": "x", "ab": "y"},
            "salt": keccak256(b"custom salt 2"),
        },
    },
    {
        "note": "Failed, so not billed. Not a realistic row: it takes each format to its edges"
        " (a time before 1970, the largest uint256, every optional text empty, no custom"
        " fields, no headers).",
        "public": {
            "schema_version": 1,
            "ledger_id": "n",
            "row_seq": UINT256_MAX,
            "finished_at": datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            "outcome": "failed",
            "enterprise": "e",
            "end_user": "",
            "contributor": "",
            "developer": "",
            "node_operator": "",
            "contributor_charity": "",
            "developer_charity": "",
            "operator_charity": "",
            "currency": "JPY",
            "fee_fiat_nano": 0,
            "fee_atto": 0,
            **_payouts(0, CharityChoices()),
            "rate_nano_per_coin": 1,
        },
        "private": {
            "salt": b"\xff" * 32,
            "request_id": "",
            "dservice": "",
            "method": "GET",
            "path": "/",
            "query": "",
            "headers": [],
            "dservice_fields": {},
            "eth_addresses": {},
            "total_time_us": 0,
            "execution_time_us": 0,
            "network_latency_us": 0,
            "cpu_time_us": 0,
            "gpu_time_us": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "attempts": 0,
            "status_code": 0,
        },
        "custom": {"fields": {}, "salt": bytes(32)},
    },
]


def _typed(column_type: ColumnType, value: object) -> Json:
    """A typed value as JSON: uints as decimal strings (JSON numbers lose precision past
    2**53), timestamps in RFC 3339, bytes in hex."""
    if column_type is ColumnType.UINT:
        shown: object = str(value)
    elif column_type is ColumnType.TIMESTAMP:
        assert isinstance(value, datetime)
        shown = value.isoformat().replace("+00:00", "Z")
    elif column_type in (ColumnType.BYTES32, ColumnType.BYTES):
        assert isinstance(value, bytes)
        shown = value.hex()
    else:
        shown = value
    return {"type": column_type.value, "value": shown}


def _private_values(inputs: Json) -> dict[str, object]:
    values = {name: inputs[name] for name in PRIVATE_COLUMNS_V1 if name in inputs}
    values["request_line"] = request_line(inputs["method"], inputs["path"], inputs["query"])
    values["request_headers"] = encode_headers(redact_headers(inputs["headers"]))
    values["dservice_fields"] = encode_pairs(inputs["dservice_fields"].items())
    values["eth_addresses"] = encode_addresses(inputs["eth_addresses"])
    return values


def _vector(row: Json) -> Json:
    inputs, custom = row["private"], row["custom"]
    private_values = _private_values(inputs)
    private_encoded = encode_private_row(private_values)
    hidden, custom_digest = (
        private_hash(private_encoded),
        custom_hash(custom["fields"], custom["salt"]),
    )
    public_values = {**row["public"], "private_hash": hidden, "custom_hash": custom_digest}
    public_encoded = encode_public_row(public_values)
    fields_encoding = encode_custom_fields(custom["fields"])
    return {
        "note": row["note"],
        "public": {
            "values": {n: _typed(PUBLIC_COLUMNS_V1[n], public_values[n]) for n in public_encoded},
            "encoded": {n: v.hex() for n, v in public_encoded.items()},
            "encoding": encode_pairs(public_encoded.items()).hex(),
            "row_hash": row_hash(public_encoded).hex(),
        },
        "private": {
            "inputs": {
                "method": inputs["method"],
                "path": inputs["path"],
                "query": inputs["query"],
                "headers": [[n, v.hex()] for n, v in inputs["headers"]],
                "redacted_headers": [[n, v.hex()] for n, v in redact_headers(inputs["headers"])],
                "dservice_fields": {n: v.hex() for n, v in inputs["dservice_fields"].items()},
                "eth_addresses": {n: v.hex() for n, v in inputs["eth_addresses"].items()},
            },
            "values": {
                n: _typed(PRIVATE_COLUMNS_V1[n], private_values[n]) for n in private_encoded
            },
            "encoded": {n: v.hex() for n, v in private_encoded.items()},
            "encoding": encode_pairs(private_encoded.items()).hex(),
            "private_hash": hidden.hex(),
        },
        "custom": {
            "fields": custom["fields"],
            "salt": custom["salt"].hex(),
            "fields_encoding": fields_encoding.hex(),
            "encoding": encode_pairs([("fields", fields_encoding), ("salt", custom["salt"])]).hex(),
            "custom_hash": custom_digest.hex(),
        },
    }


def build_vectors() -> Json:
    """The whole vector file, computed now by the code."""
    vectors = [_vector(row) for row in ROWS]
    return {
        "about": "Row hash test vectors of the CGN ledger, schema version 1 (docs/ledger.md,"
        " 'Row hash'). Hex is lower case without 0x. Typed values: uint as a decimal string,"
        " timestamp in RFC 3339, bytes and bytes32 in hex, text as a JSON string.",
        "hash": "Keccak-256 as in Ethereum (not NIST SHA3-256): keccak256('') ="
        f" {keccak256(b'').hex()}",
        "schema_version": 1,
        "rows": vectors,
        "xor_of_row_hashes": xor_aggregate(
            bytes.fromhex(v["public"]["row_hash"]) for v in vectors
        ).hex(),
    }


def _shown(column_type: str, value: str) -> str:
    return f'"{value}"' if column_type == ColumnType.TEXT else value


def worked_example(vectors: Json) -> str:
    """The worked example of docs/ledger.md (between its markers) for the first vector."""
    public = vectors["rows"][0]["public"]
    lines = [
        EXAMPLE_BEGIN,
        "",
        "| column | type | value | encoded value (hex) |",
        "| --- | --- | --- | --- |",
    ]
    for name, typed in public["values"].items():
        shown = _shown(typed["type"], typed["value"])
        encoded = f"`{public['encoded'][name]}`" if public["encoded"][name] else "(none)"
        lines.append(f"| `{name}` | {typed['type']} | `{shown}` | {encoded} |")
    lines += [
        "",
        "The encoding, one pair a line as `u32be(len(name)) name u32be(len(value)) value`"
        " (join the lines and drop the spaces for the bytes that are hashed):",
        "",
        "```text",
    ]
    for name, value_hex in public["encoded"].items():
        value_length = (len(value_hex) // 2).to_bytes(4, "big").hex()
        name_hex = name.encode().hex()
        lines.append(f"{len(name):08x} {name_hex} {value_length} {value_hex}".rstrip())
    lines += [
        "```",
        "",
        f"`row_hash` = `{public['row_hash']}`",
        "",
        EXAMPLE_END,
    ]
    return "\n".join(lines)


def main() -> None:
    """Rewrites the vector file and the worked example of the doc from the code."""
    vectors = build_vectors()
    VECTORS.write_text(json.dumps(vectors, indent=2, ensure_ascii=False) + "\n")
    doc = DOC.read_text()
    pattern = re.compile(re.escape(EXAMPLE_BEGIN) + ".*?" + re.escape(EXAMPLE_END), re.S)
    DOC.write_text(pattern.sub(lambda _: worked_example(vectors), doc, count=1))


if __name__ == "__main__":
    main()
