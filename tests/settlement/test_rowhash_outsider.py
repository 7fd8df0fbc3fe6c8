"""An outsider's check of the row hash: from docs/ledger.md alone, with nothing of ours
imported (a test below holds this file to it), two implementations recompute every figure of
tests/settlement/row_hash_vectors.json:

- one written here from the doc's description, on eth_hash's Keccak-256;
- the doc's own "recompute it yourself" snippet, run as printed (it uses pycryptodome).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "settlement" / "row_hash_vectors.json").read_text())
DOC = (ROOT / "docs" / "ledger.md").read_text()


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def pair_encoding(pairs: dict[str, bytes]) -> bytes:
    ordered = sorted(pairs.items(), key=lambda pair: pair[0].encode("utf-8"))
    return b"".join(
        u32(len(name.encode())) + name.encode() + u32(len(value)) + value for name, value in ordered
    )


def value_bytes(typed: dict[str, str]) -> bytes:
    kind, value = typed["type"], typed["value"]
    if kind == "uint":
        return int(value).to_bytes(32, "big")
    if kind == "text":
        return value.encode("utf-8")
    if kind == "timestamp":
        moment = datetime.fromisoformat(value)
        micros = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        return micros.to_bytes(8, "big", signed=True)
    assert kind in ("bytes32", "bytes"), kind
    return bytes.fromhex(value)


def header_list(headers: list[list[str]]) -> bytes:
    return b"".join(
        u32(len(name.encode())) + name.encode() + u32(len(value) // 2) + bytes.fromhex(value)
        for name, value in headers
    )


def test_keccak_is_the_ethereum_one() -> None:
    empty = "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak(b"").hex() == empty
    assert empty in VECTORS["hash"]
    assert empty in DOC


def test_an_independent_implementation_reproduces_every_vector() -> None:
    hashes = []
    for row in VECTORS["rows"]:
        public, private, custom = row["public"], row["private"], row["custom"]

        # The private columns, from the raw inputs, and the private hash.
        inputs = private["inputs"]
        redacted = [
            [n, b"[redacted]".hex()]
            if n.lower() in ("authorization", "cookie", "proxy-authorization", "set-cookie")
            else [n, v]
            for n, v in inputs["headers"]
        ]
        assert redacted == inputs["redacted_headers"]
        line = f"{inputs['method']} {inputs['path']}"
        line += f"?{inputs['query']}" if inputs["query"] else ""
        nested = {
            "request_line": line.encode(),
            "request_headers": header_list(redacted),
            "dservice_fields": pair_encoding(
                {n: bytes.fromhex(v) for n, v in inputs["dservice_fields"].items()}
            ),
            "eth_addresses": pair_encoding(
                {n: bytes.fromhex(v) for n, v in inputs["eth_addresses"].items()}
            ),
        }
        private_values = {n: value_bytes(t) for n, t in private["values"].items()}
        for name, value in nested.items():
            assert private_values[name] == value, name
        assert {n: v.hex() for n, v in private_values.items()} == private["encoded"]
        private_encoding = pair_encoding(private_values)
        assert private_encoding.hex() == private["encoding"]
        assert keccak(private_encoding).hex() == private["private_hash"]

        # The custom hash.
        fields = pair_encoding({n: v.encode() for n, v in custom["fields"].items()})
        assert fields.hex() == custom["fields_encoding"]
        outer = pair_encoding({"fields": fields, "salt": bytes.fromhex(custom["salt"])})
        assert outer.hex() == custom["encoding"]
        assert keccak(outer).hex() == custom["custom_hash"]

        # The public row, which commits to both.
        public_values = {n: value_bytes(t) for n, t in public["values"].items()}
        assert public_values["private_hash"].hex() == private["private_hash"]
        assert public_values["custom_hash"].hex() == custom["custom_hash"]
        assert {n: v.hex() for n, v in public_values.items()} == public["encoded"]
        encoding = pair_encoding(public_values)
        assert encoding.hex() == public["encoding"]
        digest = keccak(encoding)
        assert digest.hex() == public["row_hash"]
        hashes.append(int.from_bytes(digest, "big"))

    aggregate = 0
    for digest_int in hashes:
        aggregate ^= digest_int
    assert aggregate.to_bytes(32, "big").hex() == VECTORS["xor_of_row_hashes"]
    assert len(hashes) >= 3


def _snippet() -> dict[str, Any]:
    """Runs the doc's snippet and returns what it defines."""
    section = DOC.split("### Recompute it yourself", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "the doc has no snippet"
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "docs/ledger.md", "exec"), namespace)
    return namespace


def test_the_docs_snippet_reproduces_every_vector() -> None:
    snippet = _snippet()
    formats: dict[str, Callable[[str], object]] = {
        "uint": int,
        "text": str,
        "timestamp": datetime.fromisoformat,
    }
    for row in VECTORS["rows"]:
        public = row["public"]
        encoded = {n: bytes.fromhex(v) for n, v in public["encoded"].items()}
        # The public view also gives row_hash: the snippet leaves it out by itself.
        with_hash = {**encoded, "row_hash": bytes.fromhex(public["row_hash"])}
        assert snippet["row_hash"](with_hash).hex() == public["row_hash"]
        assert snippet["encode_pairs"](encoded).hex() == public["encoding"]
        for name, typed in public["values"].items():
            if typed["type"] in formats:
                value = formats[typed["type"]](typed["value"])
                assert snippet[typed["type"]](value) == encoded[name], name
        private = {n: bytes.fromhex(v) for n, v in row["private"]["encoded"].items()}
        private_digest = snippet["keccak256"](snippet["encode_pairs"](private))
        assert private_digest.hex() == row["private"]["private_hash"]
        custom = row["custom"]
        fields = snippet["encode_pairs"]({n: v.encode() for n, v in custom["fields"].items()})
        outer = {"fields": fields, "salt": bytes.fromhex(custom["salt"])}
        assert snippet["keccak256"](snippet["encode_pairs"](outer)).hex() == custom["custom_hash"]


def test_the_snippet_is_short() -> None:
    section = DOC.split("### Recompute it yourself", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code
    lines = [line for line in code.group(1).splitlines() if line.strip()]
    assert len(lines) <= 25, len(lines)


def test_this_file_imports_nothing_of_ours() -> None:
    tree = ast.parse(Path(__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    allowed = {"__future__", "ast", "collections", "datetime", "json", "pathlib", "re", "typing"}
    allowed.add("eth_hash")
    assert imported <= allowed, imported - allowed
