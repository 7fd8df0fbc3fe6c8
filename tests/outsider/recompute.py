"""An outsider's check of a CGN node's ledger, written from docs/ledger.md and protos/ alone.

It imports nothing of the CGN's code: only the standard library, grpcio, protobuf and a
Keccak-256 library (eth_hash). It generates its own Python stubs from the .proto files with
grpcio-tools, connects to a node's public port trusting only the CA file (server-authenticated
TLS, no credentials), pages through one GMT day of rows with LedgerService.ListRows,
recomputes every row hash from the row's columns with the documented pair encoding, and the
XOR aggregate of each enterprise's day. It prints JSON:

    {"ledger_id": ..., "day": "YYYY-MM-DD", "rows": [{"row_seq": n, "row_hash": hex,
     "recomputed": hex, "enterprise": pseudonym}, ...],
     "enterprises": {pseudonym: {"rows": n, "xor": hex}}, "mismatches": [row_seq, ...]}

and exits with 1 when any row's hash does not match its columns.

Usage: python recompute.py --target HOST:PORT --ca ca.pem --day 2026-03-01 [--protos DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from eth_hash.auto import keccak

LEDGER_PROTO = "cgn/ledger/v1/ledger_service.proto"
_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


def proto_closure(root: Path, first: str) -> list[str]:
    """``first`` and every .proto it imports, transitively (protobuf's own types excluded:
    grpcio-tools brings them)."""
    seen: list[str] = []
    todo = [first]
    while todo:
        name = todo.pop()
        if name in seen or name.startswith("google/protobuf/"):
            continue
        seen.append(name)
        todo += _IMPORT.findall((root / name).read_text())
    return sorted(seen)


def generate_stubs(protos: Path, out: Path) -> tuple[ModuleType, ModuleType]:
    """Runs protoc (grpcio-tools) on the ledger's protos into ``out``; returns the messages
    module and the gRPC module."""
    files = proto_closure(protos, LEDGER_PROTO)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{protos}",
        f"-I{protos / 'third_party'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    subprocess.run(command, check=True)
    sys.path.insert(0, str(out))
    module = LEDGER_PROTO.removesuffix(".proto").replace("/", ".")
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")


def u32be(n: int) -> bytes:
    return n.to_bytes(4, "big")


def pair_encoding(pairs: list[tuple[str, bytes]]) -> bytes:
    """docs/ledger.md, "The pair encoding": in ascending byte order of the UTF-8 names,
    u32be(len(name)) || name || u32be(len(value)) || value, concatenated."""
    out = b""
    for name, value in sorted(pairs, key=lambda pair: pair[0].encode("utf-8")):
        raw = name.encode("utf-8")
        out += u32be(len(raw)) + raw + u32be(len(value)) + value
    return out


def list_day(stub: Any, messages: ModuleType, day: datetime, page_size: int) -> list[Any]:
    """Every public row of the GMT day from ``day``, page by page."""
    request = messages.ListRowsRequest(page_size=page_size)
    request.start_time.FromDatetime(day)
    request.end_time.FromDatetime(day + timedelta(days=1))
    rows: list[Any] = []
    while True:
        page = stub.ListRows(request, timeout=30)
        rows += page.rows
        if not page.next_page_token:
            return rows
        request.page_token = page.next_page_token


def check(rows: list[Any]) -> dict[str, Any]:
    """Each row's hash recomputed from its columns; each enterprise's XOR aggregate."""
    report: dict[str, Any] = {"ledger_id": "", "rows": [], "enterprises": {}, "mismatches": []}
    xors: dict[str, int] = {}
    counts: dict[str, int] = {}
    for row in rows:
        columns = [(column.name, column.value) for column in row.columns]
        values = dict(columns)
        recomputed = keccak(pair_encoding(columns))
        enterprise = values["enterprise"].decode("utf-8")
        seq = int.from_bytes(values["row_seq"], "big")
        report["ledger_id"] = values["ledger_id"].decode("utf-8")
        if recomputed != row.row_hash or seq != row.row_seq:
            report["mismatches"].append(row.row_seq)
        report["rows"].append(
            {
                "row_seq": row.row_seq,
                "row_hash": row.row_hash.hex(),
                "recomputed": recomputed.hex(),
                "enterprise": enterprise,
            }
        )
        # The aggregate hash: the XOR of the row hashes (docs/ledger.md), of the recomputed
        # ones here, so that it owes nothing to what the node says a hash is.
        xors[enterprise] = xors.get(enterprise, 0) ^ int.from_bytes(recomputed, "big")
        counts[enterprise] = counts.get(enterprise, 0) + 1
    for enterprise, xor in sorted(xors.items()):
        report["enterprises"][enterprise] = {
            "rows": counts[enterprise],
            "xor": xor.to_bytes(32, "big").hex(),
        }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="the node's public port, HOST:PORT")
    parser.add_argument("--ca", required=True, help="the CA certificate the node's chains to")
    parser.add_argument("--day", required=True, help="the GMT day, YYYY-MM-DD")
    parser.add_argument(
        "--protos",
        default=str(Path(__file__).resolve().parents[2] / "protos"),
        help="the protos/ directory of the CGN repository",
    )
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--server-name", default="", help="the name in the node's certificate")
    args = parser.parse_args()
    day = datetime.strptime(args.day, "%Y-%m-%d").replace(tzinfo=UTC)
    with tempfile.TemporaryDirectory() as out:
        messages, services = generate_stubs(Path(args.protos), Path(out))
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(args.ca).read_bytes())
        with grpc.secure_channel(args.target, credentials, options=options) as channel:
            rows = list_day(services.LedgerServiceStub(channel), messages, day, args.page_size)
    report = check(rows)
    report["day"] = args.day
    print(json.dumps(report, indent=1))
    return 1 if report["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
