"""The node's ledger views over gRPC (``cgn.ledger.v1.LedgerService``; docs/ledger.md, "Views").

- Public (``ListRows``, ``GetRow``): open to anyone; each row's public columns as the exact
  bytes that were hashed, so anyone can recompute its hash without our code.
- Owner (``GetPrivateRow``, ``ListRowsByRequest``): a session is required, and only rows whose
  ``enterprise`` column is the caller's pseudonym are shown; another enterprise's row answers
  NOT_FOUND, as a row that does not exist.

The store is synchronous (SQLAlchemy Core): its calls run on a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from typing import Any, TypeAlias

from cgn_common.errors import InvalidArgumentError, NotFoundError, UnauthenticatedError
from cgn_common.interceptors import current_caller
from cgn_node.ledger_recorder import Pseudonyms
from generated.cgn.common.v1 import http_pb2, money_pb2, resources_pb2
from generated.cgn.ledger.v1 import ledger_service_pb2 as pb
from generated.cgn.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from settlement.groups import row_settlements
from settlement.ledger import LedgerStore, StoredRow, decode_pairs, iter_pairs

#: grpc ships no type stubs, so the servicer context is untyped.
Context: TypeAlias = Any

#: Rows per page when the request does not say, and the most a page holds.
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000

_TOKEN_VERSION = b"\x01"
_MAC_BYTES = 16
_NOT_FOUND = "no such row of yours in this ledger"


class PageTokens:
    """Opaque page tokens: the last row number served, bound to the page's filters and
    authenticated with an HMAC, so a token this node did not issue (or one reused with other
    filters) is refused with INVALID_ARGUMENT."""

    def __init__(self, key: bytes = b"") -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, after_seq: int, filters: bytes) -> bytes:
        message = _TOKEN_VERSION + after_seq.to_bytes(8, "big") + filters
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, after_seq: int, filters: bytes) -> str:
        """The token for the page after ``after_seq``."""
        raw = _TOKEN_VERSION + after_seq.to_bytes(8, "big") + self._mac(after_seq, filters)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def read(self, token: str, filters: bytes) -> int:
        """The row number a token carries (0 for no token)."""
        if not token:
            return 0
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 1 + 8 + _MAC_BYTES and raw[:1] == _TOKEN_VERSION:
            after_seq = int.from_bytes(raw[1:9], "big")
            if hmac.compare_digest(raw[9:], self._mac(after_seq, filters)):
                return after_seq
        raise InvalidArgumentError(
            "page_token: not a token of this node for these filters", reason="INVALID_PAGE_TOKEN"
        )


def _time(stamp: Any, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def _filters(start: datetime | None, end: datetime | None, enterprise: str) -> bytes:
    """The filters a page token is bound to, as bytes."""
    return "|".join(
        (start.isoformat() if start else "", end.isoformat() if end else "", enterprise)
    ).encode()


def public_row(row: StoredRow) -> pb.PublicRow:
    """A stored row's public view: every public column as hashed, and its hash."""
    columns = row.public  # in stored order, which is the hashing order
    return pb.PublicRow(
        row_hash=row.row_hash,
        schema_version=int.from_bytes(columns.get("schema_version", b""), "big"),
        ledger_id=columns.get("ledger_id", b"").decode("utf-8", "replace"),
        row_seq=row.row_seq,
        columns=[pb.Column(name=name, value=value) for name, value in columns.items()],
    )


def _headers(encoded: bytes) -> list[http_pb2.HttpHeader]:
    """The request headers of the private column ``request_headers``: a sequence of
    ``u32be(len(name)) name u32be(len(value)) value``, in the order received."""
    return [http_pb2.HttpHeader(name=name, value=value) for name, value in iter_pairs(encoded)]


def _texts(encoded: bytes) -> dict[str, str]:
    return {name: value.decode("utf-8", "replace") for name, value in decode_pairs(encoded).items()}


def _uint(columns: dict[str, bytes], name: str) -> int:
    return int.from_bytes(columns.get(name, b""), "big")


def private_row(
    row: StoredRow, settlements: list[tuple[str, bool, bytes]] | None = None
) -> pb.GetPrivateRowResponse:
    """A stored row's owner view: the public view, the private columns as hashed, the custom
    fields with their salt, the same decoded into typed fields, and each entity's settlement
    state (``settlement.groups.row_settlements``)."""
    public = row.public
    private = decode_pairs(row.private_fields)
    custom = decode_pairs(row.custom_fields)

    def text(name: str) -> str:
        return private.get(name, b"").decode("utf-8", "replace")

    response = pb.GetPrivateRowResponse(
        row=public_row(row),
        private_columns=[pb.Column(name=name, value=value) for name, value in private.items()],
        custom_fields_encoding=row.custom_fields,
        request_id=text("request_id"),
        dservice=text("dservice"),
        request_line=text("request_line"),
        headers=_headers(private.get("request_headers", b"")),
        dservice_fields=_texts(private.get("dservice_fields", b"")),
        custom_fields=_texts(custom.get("fields", b"")),
        usage=resources_pb2.ResourceUsage(
            bytes_in=_uint(private, "bytes_in"), bytes_out=_uint(private, "bytes_out")
        ),
        attempts=_uint(private, "attempts"),
        status_code=_uint(private, "status_code"),
        fee=money_pb2.FiatAmount(
            currency_code=public.get("currency", b"").decode("utf-8", "replace"),
            nano_units=_uint(public, "fee_fiat_nano"),
        ),
        fee_tokens=money_pb2.TokenAmount(atto_units_be=public.get("fee_atto", b"").lstrip(b"\0")),
        settlements=[
            pb.SettlementStatus(pseudonym=who, settled=settled, transaction_hash=transaction)
            for who, settled, transaction in settlements or []
        ],
    )
    response.usage.cpu_time.FromMicroseconds(_uint(private, "cpu_time_us"))
    response.usage.wall_time.FromMicroseconds(_uint(private, "execution_time_us"))
    response.usage.gpu_time.FromMicroseconds(_uint(private, "gpu_time_us"))
    response.total_time.FromMicroseconds(_uint(private, "total_time_us"))
    response.network_latency.FromMicroseconds(_uint(private, "network_latency_us"))
    return response


class LedgerView(ledger_grpc.LedgerServiceServicer):
    """``LedgerService`` over one node's ledger store.

    ``pseudonyms`` tells the caller's enterprise pseudonym from its session's account id (asked
    of Central once per account); ``token_key`` authenticates page tokens (random when empty:
    tokens then last until the node restarts).
    """

    def __init__(self, store: LedgerStore, pseudonyms: Pseudonyms, token_key: bytes = b"") -> None:
        self._store = store
        self._pseudonyms = pseudonyms
        self._tokens = PageTokens(token_key)

    async def ListRows(  # noqa: N802
        self, request: pb.ListRowsRequest, context: Context
    ) -> pb.ListRowsResponse:
        start = _time(request.start_time, request.HasField("start_time"))
        end = _time(request.end_time, request.HasField("end_time"))
        enterprise = request.enterprise_pseudonym
        filters = _filters(start, end, enterprise)
        after_seq = self._tokens.read(request.page_token, filters)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        # One row more than the page: a page is known to be the last without an empty one.
        rows = await asyncio.to_thread(
            self._store.rows, start, end, enterprise, after_seq, size + 1
        )
        page = rows[:size]
        token = self._tokens.issue(page[-1].row_seq, filters) if len(rows) > size else ""
        return pb.ListRowsResponse(rows=[public_row(r) for r in page], next_page_token=token)

    async def _row(self, row_seq: int) -> StoredRow | None:
        if row_seq <= 0:
            raise InvalidArgumentError("row_seq is required")
        rows = await asyncio.to_thread(self._store.rows, None, None, "", row_seq - 1, 1)
        return rows[0] if rows and rows[0].row_seq == row_seq else None

    async def GetRow(  # noqa: N802
        self, request: pb.GetRowRequest, context: Context
    ) -> pb.GetRowResponse:
        row = await self._row(request.row_seq)
        if row is None:
            raise NotFoundError(f"no row {request.row_seq} in this ledger")
        return pb.GetRowResponse(row=public_row(row))

    async def _owner(self) -> bytes | None:
        """The caller's enterprise pseudonym as stored in the column ``enterprise``; None when
        it has none (rows written without a pseudonym belong to nobody here)."""
        session = current_caller().session
        if session is None:  # the rule table requires one: this is a misconfigured server
            raise UnauthenticatedError("a session token is required")
        pseudonym = await self._pseudonyms.of(session.account_id)
        return pseudonym.encode() if pseudonym else None

    @staticmethod
    def _owned(row: StoredRow, owner: bytes | None) -> bool:
        return owner is not None and row.public.get("enterprise") == owner

    async def GetPrivateRow(  # noqa: N802
        self, request: pb.GetPrivateRowRequest, context: Context
    ) -> pb.GetPrivateRowResponse:
        owner = await self._owner()
        row = await self._row(request.row_seq)
        # Another enterprise's row is answered as a missing one: its existence is not told.
        if row is None or not self._owned(row, owner):
            raise NotFoundError(_NOT_FOUND)
        return private_row(row, await asyncio.to_thread(row_settlements, self._store, row))

    async def ListRowsByRequest(  # noqa: N802
        self, request: pb.ListRowsByRequestRequest, context: Context
    ) -> pb.ListRowsByRequestResponse:
        if not request.request_id:
            raise InvalidArgumentError("request_id is required")
        owner = await self._owner()
        rows = await asyncio.to_thread(self._store.by_request, request.request_id)
        return pb.ListRowsByRequestResponse(
            rows=[
                private_row(r, await asyncio.to_thread(row_settlements, self._store, r))
                for r in rows
                if self._owned(r, owner)
            ]
        )
