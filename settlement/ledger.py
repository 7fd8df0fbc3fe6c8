"""The microtransaction ledger store: one write-once row per finished work unit.

Rows are appended in batches by one writer per ledger (the node that owns it), numbered
gap-free from 1, hashed as ``docs/ledger.md`` specifies and inserted with one batched
statement per commit. The store has no way to change or delete a row, and the database
refuses it too (triggers: ``settlement/ledger_schema.py``). :meth:`LedgerStore.verify` finds a
row altered or deleted behind the database's back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, func, select, text

from cgn_common.errors import InvalidArgumentError
from settlement.ledger_schema import TRIGGER_NAMES, ledger_meta, ledger_rows
from settlement.rowhash import (
    PUBLIC_COLUMNS_V1,
    ColumnType,
    encode_custom_fields,
    encode_pairs,
    encode_private_row,
    encode_public_row,
    keccak256,
    xor_aggregate,
)
from settlement.split import Payouts

SCHEMA_VERSION = 1

#: Rows read per query by the readers and :meth:`LedgerStore.verify`.
PAGE = 5000


class Outcome(enum.StrEnum):
    """How a work unit ended (SPEC 15, Work: billing)."""

    #: The response reached the DApp: billed.
    DELIVERED = "delivered"
    #: The DApp went away or its deadline passed: billed for what was used until the cancel.
    ABANDONED = "abandoned"
    #: The CGN or a miner failed: recorded, not billed (fee 0).
    FAILED = "failed"


@dataclass(frozen=True)
class LedgerEntry:
    """What the node hands the ledger for one finished work unit (before numbering and
    hashing). ``private_fields`` and ``custom_fields`` are pair encodings
    (``settlement.rowhash``), stored and hashed as given."""

    finished_at: datetime
    outcome: Outcome
    request_id: str
    enterprise: str
    end_user: str
    contributor: str
    developer: str
    node_operator: str
    contributor_charity: str
    developer_charity: str
    operator_charity: str
    currency: str
    fee_fiat_nano: int
    fee_atto: int
    payouts: Payouts
    rate_nano_per_coin: int
    private_fields: bytes
    custom_fields: bytes


class InvalidEntryError(ValueError):
    """Entry ``index`` of a batch can never be written."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"entry {index}: {reason}")
        self.index = index


def check_entry(entry: LedgerEntry) -> None:
    """The cheap checks of an entry (ValueError): payouts summing to the fee, an aware time."""
    if entry.payouts.total != entry.fee_atto:
        raise ValueError(f"payouts sum to {entry.payouts.total}, not to the fee {entry.fee_atto}")
    if entry.finished_at.tzinfo is None:
        raise ValueError("ledger times must be timezone-aware")


@dataclass(frozen=True)
class StoredRow:
    """A row as stored: its number, its public columns exactly as hashed, its hash."""

    row_seq: int
    public_fields: bytes
    row_hash: bytes
    private_fields: bytes
    custom_fields: bytes

    @property
    def public(self) -> dict[str, bytes]:
        """The public columns, name to value bytes, as hashed."""
        return decode_pairs(self.public_fields)


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("ledger times must be timezone-aware")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


#: The public columns in hashing order: (name, its pair prefix, its type).
_PUBLIC_PLAN = tuple(
    (name, _u32(len(name)) + name.encode(), kind)
    for name, kind in sorted(PUBLIC_COLUMNS_V1.items(), key=lambda item: item[0].encode())
)
_UINT_HEAD = _u32(32)
_TIME_HEAD = _u32(8)
_SCHEMA_VERSION_BYTES = SCHEMA_VERSION.to_bytes(32, "big")


def encode_public_fast(values: Mapping[str, Any]) -> bytes:
    """The canonical pair encoding of a row's public columns: the same bytes as
    ``settlement.rowhash.encode_pairs(encode_public_row(values).items())`` (a test holds them
    equal), made in one pass for the insert path. Raises ValueError or OverflowError for a
    value its type cannot hold."""
    parts: list[bytes] = []
    for name, prefix, kind in _PUBLIC_PLAN:
        value = values[name]
        if kind is ColumnType.UINT:
            if type(value) is not int:
                raise ValueError(f"{name} must be an integer")
            parts += (prefix, _UINT_HEAD, value.to_bytes(32, "big"))
        elif kind is ColumnType.TEXT:
            raw = value.encode("utf-8")
            parts += (prefix, _u32(len(raw)), raw)
        elif kind is ColumnType.TIMESTAMP:
            parts += (prefix, _TIME_HEAD, _micros(value).to_bytes(8, "big", signed=True))
        else:
            if len(value) != 32:
                raise ValueError(f"{name} must be 32 bytes")
            parts += (prefix, _UINT_HEAD, value)
    return b"".join(parts)


#: Each public column's pair prefix plus, for fixed-size types, its value's length header.
_PUBLIC_HEADS = {
    name: prefix
    + (_UINT_HEAD if kind in (ColumnType.UINT, ColumnType.BYTES32) else b"")
    + (_TIME_HEAD if kind is ColumnType.TIMESTAMP else b"")
    for name, prefix, kind in _PUBLIC_PLAN
}
#: The unrolled encoder in LedgerStore._row must follow this order (a test holds it so).
assert [name for name, _, _ in _PUBLIC_PLAN] == [
    "contributor", "contributor_charity", "currency", "custom_hash", "developer",
    "developer_charity", "end_user", "enterprise", "fee_atto", "fee_fiat_nano", "finished_at",
    "ledger_id", "node_operator", "operator_charity", "outcome", "payout_contributor",
    "payout_contributor_charity", "payout_developer", "payout_developer_charity",
    "payout_operator", "payout_operator_charity", "private_hash", "rate_nano_per_coin",
    "row_seq", "schema_version",
]  # fmt: skip


def _uint256(value: int) -> bytes:
    if type(value) is not int:
        raise ValueError(f"an amount must be an integer, got {value!r}")
    return value.to_bytes(32, "big")  # OverflowError when negative or >= 2**256


def decode_pairs(blob: bytes) -> dict[str, bytes]:
    """The name/value pairs of a canonical pair encoding (ValueError when it is not one)."""
    pairs: dict[str, bytes] = {}
    at, end = 0, len(blob)
    while at < end:
        if at + 4 > end:
            raise ValueError("truncated pair encoding")
        size = int.from_bytes(blob[at : at + 4], "big")
        name = blob[at + 4 : at + 4 + size].decode()
        at += 4 + size
        size = int.from_bytes(blob[at : at + 4], "big")
        if at + 4 + size > end:
            raise ValueError("truncated pair encoding")
        pairs[name] = blob[at + 4 : at + 4 + size]
        at += 4 + size
    return pairs


def _uint(value: bytes) -> int:
    return int.from_bytes(value, "big")


_BLOBS = ("private_fields", "private_hash", "custom_fields", "custom_hash")


def private_fields(values: Mapping[str, object]) -> bytes:
    """The ``private_fields`` of an entry: the pair encoding of the private columns
    (``settlement.rowhash.PRIVATE_COLUMNS_V1``), whose Keccak-256 is the row's
    ``private_hash``."""
    return encode_pairs(encode_private_row(values).items())


def custom_fields(fields: Mapping[str, str], salt: bytes) -> bytes:
    """The ``custom_fields`` of an entry: the pairs ``fields`` and ``salt`` whose Keccak-256
    is the row's ``custom_hash`` (``settlement.rowhash.custom_hash``)."""
    return encode_pairs([("fields", encode_custom_fields(fields)), ("salt", salt)])


@dataclass(frozen=True)
class Problem:
    """One thing :meth:`LedgerStore.verify` found wrong; ``row_seq`` names the row."""

    row_seq: int | None
    what: str


@dataclass
class VerifyReport:
    """What a verification looked at and found."""

    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    problems: list[Problem] | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was found wrong."""
        return not self.problems


class LedgerStore:
    """One node's ledger on an open engine (``settlement.ledger_db.open_ledger``).

    One process writes a ledger; ``append`` is not safe to call concurrently (the node's
    background writer is its only caller).
    """

    def __init__(self, engine: Engine, ledger_id: str) -> None:
        self.engine = engine
        self.ledger_id = ledger_id
        with engine.begin() as connection:
            stored = connection.execute(
                select(ledger_meta.c.value).where(ledger_meta.c.key == "ledger_id")
            ).scalar()
            if stored is None:
                connection.execute(ledger_meta.insert().values(key="ledger_id", value=ledger_id))
            elif stored != ledger_id:
                raise ValueError(f"this database holds ledger {stored!r}, not {ledger_id!r}")
            last = connection.execute(select(func.max(ledger_rows.c.row_seq))).scalar()
        self._next_seq = int(last or 0) + 1
        self._texts: dict[str, bytes] = {}
        mark = "%s" if engine.dialect.name == "postgresql" else "?"
        columns = [column.name for column in ledger_rows.columns]
        self._insert = (
            f"INSERT INTO ledger_rows ({', '.join(columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})"
        )

    def _text(self, value: str) -> bytes:
        """A text value with its length header; repeated values (pseudonyms, currency) are
        encoded once."""
        encoded = self._texts.get(value)
        if encoded is None:
            raw = value.encode("utf-8")
            encoded = _u32(len(raw)) + raw
            if len(self._texts) < 100_000:
                self._texts[value] = encoded
        return encoded

    def _row(self, seq: int, entry: LedgerEntry) -> tuple[tuple[Any, ...], StoredRow]:
        p = entry.payouts
        t = self._text
        h = _PUBLIC_HEADS
        finished_at_us = _micros(entry.finished_at)
        # The public columns in hashing order (encode_public_fast's order, unrolled).
        public = b"".join(
            (
                h["contributor"], t(entry.contributor),
                h["contributor_charity"], t(entry.contributor_charity),
                h["currency"], t(entry.currency),
                h["custom_hash"], keccak256(entry.custom_fields),
                h["developer"], t(entry.developer),
                h["developer_charity"], t(entry.developer_charity),
                h["end_user"], t(entry.end_user),
                h["enterprise"], t(entry.enterprise),
                h["fee_atto"], _uint256(entry.fee_atto),
                h["fee_fiat_nano"], _uint256(entry.fee_fiat_nano),
                h["finished_at"], finished_at_us.to_bytes(8, "big", signed=True),
                h["ledger_id"], t(self.ledger_id),
                h["node_operator"], t(entry.node_operator),
                h["operator_charity"], t(entry.operator_charity),
                h["outcome"], t(str(entry.outcome)),
                h["payout_contributor"], _uint256(p.contributor),
                h["payout_contributor_charity"], _uint256(p.contributor_charity),
                h["payout_developer"], _uint256(p.developer),
                h["payout_developer_charity"], _uint256(p.developer_charity),
                h["payout_operator"], _uint256(p.operator),
                h["payout_operator_charity"], _uint256(p.operator_charity),
                h["private_hash"], keccak256(entry.private_fields),
                h["rate_nano_per_coin"], _uint256(entry.rate_nano_per_coin),
                h["row_seq"], _uint256(seq),
                h["schema_version"], _SCHEMA_VERSION_BYTES,
            )
        )  # fmt: skip
        digest = keccak256(public)
        row = (
            seq,
            finished_at_us,
            entry.enterprise,
            entry.request_id,
            digest,
            public,
            entry.private_fields,
            entry.custom_fields,
        )
        return row, StoredRow(seq, public, digest, entry.private_fields, entry.custom_fields)

    def append(self, entries: Sequence[LedgerEntry]) -> list[StoredRow]:
        """Numbers, hashes and inserts ``entries`` in one transaction (one batched statement
        through the driver); returns the rows once committed (durable as docs/ledger.md
        defines). Nothing is inserted when an entry is refused (InvalidEntryError) or the
        database fails."""
        if not entries:
            return []
        rows, stored = [], []
        for offset, entry in enumerate(entries):
            try:
                check_entry(entry)
                row, done = self._row(self._next_seq + offset, entry)
            except (ValueError, TypeError, OverflowError, InvalidArgumentError) as exc:
                raise InvalidEntryError(offset, str(exc)) from exc
            rows.append(row)
            stored.append(done)
        with self.engine.begin() as connection:
            connection.exec_driver_sql(self._insert, rows)
        self._next_seq += len(entries)
        return stored

    def _select(
        self, where: ColumnElement[bool] | None, after_seq: int, limit: int
    ) -> list[dict[str, Any]]:
        query = (
            select(ledger_rows)
            .where(ledger_rows.c.row_seq > after_seq)
            .order_by(ledger_rows.c.row_seq)
            .limit(limit)
        )
        if where is not None:
            query = query.where(where)
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(query)]

    @staticmethod
    def _stored(row: dict[str, Any]) -> StoredRow:
        return StoredRow(
            int(row["row_seq"]),
            bytes(row["public_fields"]),
            bytes(row["row_hash"]),
            bytes(row["private_fields"]),
            bytes(row["custom_fields"]),
        )

    def rows(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        enterprise: str = "",
        after_seq: int = 0,
        limit: int = 500,
    ) -> list[StoredRow]:
        """Rows in ``[start, end)`` (of ``enterprise`` when given), by number, after
        ``after_seq``: one page of at most ``limit``."""
        conditions = []
        if start is not None:
            conditions.append(ledger_rows.c.finished_at_us >= _micros(start))
        if end is not None:
            conditions.append(ledger_rows.c.finished_at_us < _micros(end))
        if enterprise:
            conditions.append(ledger_rows.c.enterprise == enterprise)
        where: ColumnElement[bool] | None = and_(*conditions) if conditions else None
        return [self._stored(r) for r in self._select(where, after_seq, limit)]

    def by_request(self, request_id: str) -> list[StoredRow]:
        """The rows of one request id (one per finished work unit of it)."""
        return [
            self._stored(r) for r in self._select(ledger_rows.c.request_id == request_id, 0, PAGE)
        ]

    def count(self) -> int:
        """How many rows the ledger holds."""
        with self.engine.connect() as connection:
            counted = connection.execute(select(func.count()).select_from(ledger_rows))
            return int(counted.scalar_one())

    def _all(self) -> Iterator[dict[str, Any]]:
        after = 0
        while page := self._select(None, after, PAGE):
            yield from page
            after = int(str(page[-1]["row_seq"]))

    def aggregate(self, day_start: datetime, enterprise: str) -> tuple[int, bytes]:
        """(row count, XOR of row hashes) of one enterprise's GMT day from ``day_start``."""
        hashes: list[bytes] = []
        after = 0
        end = _micros(day_start) + 86_400_000_000
        where = (
            (ledger_rows.c.enterprise == enterprise)
            & (ledger_rows.c.finished_at_us >= _micros(day_start))
            & (ledger_rows.c.finished_at_us < end)
        )
        while page := self._select(where, after, PAGE):
            hashes.extend(bytes(r["row_hash"]) for r in page)
            after = int(str(page[-1]["row_seq"]))
        return len(hashes), xor_aggregate(hashes)

    def _triggers_present(self) -> bool:
        with self.engine.connect() as connection:
            if self.engine.dialect.name == "sqlite":
                names = connection.execute(
                    text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                ).scalars()
            else:
                names = connection.execute(
                    text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
                ).scalars()
            present = set(names)
        return TRIGGER_NAMES[self.engine.dialect.name] <= present

    def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Re-reads every row: numbering without gaps, each hash recomputed from the stored
        columns, payouts summing to the fee, the write-once triggers in place."""
        report = VerifyReport(problems=[])
        assert report.problems is not None
        if not self._triggers_present():
            report.problems.append(Problem(None, "the write-once triggers are missing"))
        expected: int | None = None
        for row in self._all():
            seq = int(str(row["row_seq"]))
            report.rows += 1
            if report.first_seq is None:
                report.first_seq = seq
                if seq != 1:
                    report.problems.append(Problem(seq, f"rows 1 to {seq - 1} are missing"))
            elif expected is not None and seq != expected:
                report.problems.append(
                    Problem(seq, f"rows {expected} to {seq - 1} are missing before it")
                )
            expected = seq + 1
            report.last_seq = seq
            self._check_row(row, report.problems)
            if progress is not None and report.rows % PAGE == 0:
                progress(report.rows)
        if progress is not None:
            progress(report.rows)
        return report

    def _check_row(self, row: dict[str, Any], problems: list[Problem]) -> None:
        seq = int(row["row_seq"])
        blob = bytes(row["public_fields"])
        if keccak256(blob) != bytes(row["row_hash"]):
            problems.append(Problem(seq, "the row hash does not match its public columns"))
        try:
            public = decode_pairs(blob)
            typed = _typed(public)
            canonical = encode_pairs(encode_public_row(typed).items())
        except (ValueError, TypeError, KeyError, InvalidArgumentError) as exc:
            problems.append(Problem(seq, f"the public columns cannot be read: {exc}"))
            return
        if canonical != blob:
            problems.append(Problem(seq, "the public columns are not in canonical form"))
        if typed["row_seq"] != seq or typed["ledger_id"] != self.ledger_id:
            problems.append(Problem(seq, "the row's number or ledger does not match its place"))
        if (
            _micros(typed["finished_at"]) != int(row["finished_at_us"])
            or typed["enterprise"] != row["enterprise"]
        ):
            problems.append(Problem(seq, "the indexed columns disagree with the hashed ones"))
        if keccak256(bytes(row["private_fields"])) != typed["private_hash"]:
            problems.append(Problem(seq, "the private columns do not match private_hash"))
        if keccak256(bytes(row["custom_fields"])) != typed["custom_hash"]:
            problems.append(Problem(seq, "the custom fields do not match custom_hash"))
        if sum(typed[name] for name in _PAYOUTS) != typed["fee_atto"]:
            problems.append(Problem(seq, "the payouts do not sum to the fee"))


_PAYOUTS = (
    "payout_contributor",
    "payout_contributor_charity",
    "payout_developer",
    "payout_developer_charity",
    "payout_operator",
    "payout_operator_charity",
)


def _typed(public: Mapping[str, bytes]) -> dict[str, Any]:
    """The typed values of decoded public columns (KeyError when one is missing)."""
    typed: dict[str, Any] = {}
    for name, kind in PUBLIC_COLUMNS_V1.items():
        value = public[name]
        if kind is ColumnType.UINT:
            typed[name] = _uint(value)
        elif kind is ColumnType.TEXT:
            typed[name] = value.decode("utf-8")
        elif kind is ColumnType.TIMESTAMP:
            typed[name] = _from_micros(int.from_bytes(value, "big", signed=True))
        else:
            typed[name] = value
    extra = set(public) - set(PUBLIC_COLUMNS_V1)
    if extra:
        raise ValueError(f"unknown public columns {sorted(extra)}")
    return typed
