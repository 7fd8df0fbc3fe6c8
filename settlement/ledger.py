"""The microtransaction ledger store: one write-once row per finished work unit.

Rows are appended in batches by one writer per ledger (the node that owns it), numbered
gap-free from 1, hashed as ``docs/ledger.md`` specifies and inserted with one batched
statement per commit. The store has no way to change or delete a row, and the database
refuses it too (triggers: ``settlement/ledger_schema.py``). :meth:`LedgerStore.verify` finds a
row altered or deleted behind the database's back.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, func, select, text
from tiny_keccak import keccak256 as _keccak  # as in settlement.rowhash

from cgn_common.errors import InvalidArgumentError
from settlement.ledger_schema import (
    create_period,
    ledger_meta,
    ledger_periods,
    ledger_rows,
    period_bounds,
    period_of,
    period_table,
    trigger_names,
    view_ddl,
)
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

#: Rows committed between two checkpoints by the writer (:meth:`LedgerStore.checkpoint`):
#: about 25 MB of log, a third of SQLite's own threshold (settlement.ledger_db).
CHECKPOINT_ROWS = 20_000


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


class StoredRow(NamedTuple):
    """A row as stored: its number, its public columns exactly as hashed, its hash (a named
    tuple: the writer makes thousands a second, and a frozen dataclass costs 1 µs each)."""

    row_seq: int
    public_fields: bytes
    row_hash: bytes
    private_fields: bytes
    custom_fields: bytes

    @property
    def public(self) -> dict[str, bytes]:
        """The public columns, name to value bytes, as hashed."""
        return decode_pairs(self.public_fields)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("ledger times must be timezone-aware")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The instant ``micros`` microseconds after the Unix epoch (a timestamp column), UTC."""
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


# The heads as module names, for LedgerStore._encode's loop.
_H_CONTRIBUTOR = _PUBLIC_HEADS["contributor"]
_H_CONTRIBUTOR_CHARITY = _PUBLIC_HEADS["contributor_charity"]
_H_CURRENCY = _PUBLIC_HEADS["currency"]
_H_CUSTOM_HASH = _PUBLIC_HEADS["custom_hash"]
_H_DEVELOPER = _PUBLIC_HEADS["developer"]
_H_DEVELOPER_CHARITY = _PUBLIC_HEADS["developer_charity"]
_H_END_USER = _PUBLIC_HEADS["end_user"]
_H_ENTERPRISE = _PUBLIC_HEADS["enterprise"]
_H_FEE_ATTO = _PUBLIC_HEADS["fee_atto"]
_H_FEE_FIAT_NANO = _PUBLIC_HEADS["fee_fiat_nano"]
_H_FINISHED_AT = _PUBLIC_HEADS["finished_at"]
_H_LEDGER_ID = _PUBLIC_HEADS["ledger_id"]
_H_NODE_OPERATOR = _PUBLIC_HEADS["node_operator"]
_H_OPERATOR_CHARITY = _PUBLIC_HEADS["operator_charity"]
_H_OUTCOME = _PUBLIC_HEADS["outcome"]
_H_PAYOUT_CONTRIBUTOR = _PUBLIC_HEADS["payout_contributor"]
_H_PAYOUT_CONTRIBUTOR_CHARITY = _PUBLIC_HEADS["payout_contributor_charity"]
_H_PAYOUT_DEVELOPER = _PUBLIC_HEADS["payout_developer"]
_H_PAYOUT_DEVELOPER_CHARITY = _PUBLIC_HEADS["payout_developer_charity"]
_H_PAYOUT_OPERATOR = _PUBLIC_HEADS["payout_operator"]
_H_PAYOUT_OPERATOR_CHARITY = _PUBLIC_HEADS["payout_operator_charity"]
_H_PRIVATE_HASH = _PUBLIC_HEADS["private_hash"]
_H_RATE_NANO_PER_COIN = _PUBLIC_HEADS["rate_nano_per_coin"]
_H_ROW_SEQ = _PUBLIC_HEADS["row_seq"]
#: The last column, the same in every row of this schema version.
_TAIL = _PUBLIC_HEADS["schema_version"] + _SCHEMA_VERSION_BYTES
#: Keccak-256 of an empty ``custom_fields`` (a row without custom fields).
_EMPTY_HASH = keccak256(b"")
#: The runs of adjacent text columns LedgerStore._encode takes from its cache.
_HEADS_1 = (_H_CONTRIBUTOR, _H_CONTRIBUTOR_CHARITY, _H_CURRENCY)
_HEADS_2 = (_H_DEVELOPER, _H_DEVELOPER_CHARITY, _H_END_USER, _H_ENTERPRISE)
_HEADS_3 = (_H_NODE_OPERATOR, _H_OPERATOR_CHARITY, _H_OUTCOME)


def _uint256(value: int) -> bytes:
    if type(value) is not int:
        raise ValueError(f"an amount must be an integer, got {value!r}")
    return value.to_bytes(32, "big")  # OverflowError when negative or >= 2**256


def iter_pairs(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """The name/value pairs of a pair encoding, in their order, repeats kept (a header list
    has them); ValueError when it is not one."""
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
        yield name, blob[at + 4 : at + 4 + size]
        at += 4 + size


def decode_pairs(blob: bytes) -> dict[str, bytes]:
    """The name/value pairs of a canonical pair encoding (ValueError when it is not one)."""
    return dict(iter_pairs(blob))


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


class RetiredPeriod(NamedTuple):
    """A period whose rows left the ledger whole (settlement.retention)."""

    period: str
    first_seq: int
    last_seq: int
    rows: int
    export_name: str
    export_sha256: str


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


_COLUMNS = ", ".join(column.name for column in ledger_rows.columns)
_WIDTH = len(ledger_rows.columns)
#: Rows per INSERT statement on SQLite: as many as its 32,766 bound values allow.
_SQLITE_CHUNK = 32_766 // _WIDTH


@functools.cache
def _sqlite_insert(table: str, rows: int) -> str:
    one = "(" + ", ".join(["?"] * _WIDTH) + ")"
    return f"INSERT INTO {table} ({_COLUMNS}) VALUES " + ", ".join([one] * rows)


def insert_rows(connection: Connection, table: str, values: Sequence[Any]) -> None:
    """Inserts ledger rows into ``table`` (a period's) in ``connection``'s transaction:
    ``values`` holds the rows one after the other, ``ledger_rows``' eight columns each, in
    order. The fastest way each database offers from Python: on SQLite multi-row INSERTs of
    up to 4,095 rows (one call into SQLite, which runs without the GIL, where an executemany
    takes it back for every row), on PostgreSQL a COPY. bench/ledger_ingest.py measures its
    floor with it too."""
    driver = connection.connection.driver_connection
    assert driver is not None
    if connection.dialect.name == "postgresql":
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY {table} ({_COLUMNS}) FROM STDIN") as copy,
        ):
            for row in zip(*[iter(values)] * _WIDTH, strict=True):
                copy.write_row(row)
        return
    cursor = driver.cursor()
    step = _SQLITE_CHUNK * _WIDTH
    try:
        for start in range(0, len(values), step):
            chunk = values[start : start + step]
            cursor.execute(_sqlite_insert(table, len(chunk) // _WIDTH), chunk)
    finally:
        cursor.close()


def _stored_rows(values: Sequence[Any]) -> list[StoredRow]:
    """The StoredRows of insert values (see insert_rows)."""
    return [
        StoredRow(seq, public, digest, private, custom)
        for seq, _, _, _, digest, public, private, custom in zip(
            *[iter(values)] * _WIDTH, strict=True
        )
    ]


@dataclass(frozen=True)
class PreparedBatch:
    """Entries numbered and hashed by :meth:`LedgerStore.prepare`, not yet committed."""

    first_seq: int
    count: int
    #: Insert values by period (see insert_rows; a batch spans two periods at a month's turn).
    values: dict[str, list[Any]]

    @property
    def rows(self) -> list[StoredRow]:
        """The batch's rows as they will be stored, by number."""
        rows = [row for values in self.values.values() for row in _stored_rows(values)]
        return sorted(rows, key=lambda row: row.row_seq)


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
            periods = connection.execute(
                select(ledger_periods.c.period, ledger_periods.c.state, ledger_periods.c.last_seq)
            ).all()
            last = 0
            self._live: dict[str, Table] = {}
            self._retired: set[str] = set()
            for period, state, last_seq in periods:
                if state == "live":
                    table = self._live[period] = period_table(period)
                    top = connection.execute(select(func.max(table.c.row_seq))).scalar()
                else:
                    self._retired.add(period)
                    top = last_seq
                last = max(last, int(top or 0))
        self._next_seq = last + 1
        #: The number the next prepared batch starts at (ahead of _next_seq while a prepared
        #: batch waits to be committed).
        self._reserved = self._next_seq
        self._texts: dict[str, bytes] = {}
        self._segments: dict[tuple[str, ...], bytes] = {}
        self._splits: dict[tuple[int, ...], tuple[bytes, bytes]] = {}

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

    def _segment(self, heads: tuple[bytes, ...], values: tuple[str, ...]) -> bytes:
        """Adjacent text columns, each with its head, encoded once per distinct ``values``
        (pseudonyms, currency and outcome repeat from row to row)."""
        cache = self._segments
        encoded = b"".join(head + self._text(str(v)) for head, v in zip(heads, values, strict=True))
        if len(cache) < 100_000:
            cache[values] = encoded
        return encoded

    def _amounts(self, fee_atto: int, p: Payouts) -> tuple[bytes, bytes]:
        """``fee_atto``'s column and the six payout columns, checked to sum to the fee, encoded
        once per distinct split (every fee of one size splits alike)."""
        if p.total != fee_atto:
            raise ValueError(f"payouts sum to {p.total}, not to the fee {fee_atto}")
        encoded = (
            _H_FEE_ATTO + _uint256(fee_atto),
            b"".join(
                (
                    _H_PAYOUT_CONTRIBUTOR, _uint256(p.contributor),
                    _H_PAYOUT_CONTRIBUTOR_CHARITY, _uint256(p.contributor_charity),
                    _H_PAYOUT_DEVELOPER, _uint256(p.developer),
                    _H_PAYOUT_DEVELOPER_CHARITY, _uint256(p.developer_charity),
                    _H_PAYOUT_OPERATOR, _uint256(p.operator),
                    _H_PAYOUT_OPERATOR_CHARITY, _uint256(p.operator_charity),
                )
            ),
        )  # fmt: skip
        if len(self._splits) < 10_000:
            self._splits[
                (fee_atto, p.contributor, p.contributor_charity, p.developer,
                 p.developer_charity, p.operator, p.operator_charity)
            ] = encoded  # fmt: skip
        return encoded

    def _encode(self, entries: Sequence[LedgerEntry], first_seq: int) -> dict[str, list[Any]]:
        """Numbers and hashes ``entries`` from ``first_seq``: their insert values by period
        (see insert_rows). The public columns are encoded in hashing order, unrolled (a
        property test holds every row equal to ``settlement.rowhash``'s canonical encoding),
        runs of repeating columns from caches; everything the loop needs is a local name."""
        by_period: dict[str, list[Any]] = {}
        # The period of the last row and its bounds: rows arrive in time order, so a batch
        # changes period at most at a month's turn.
        low = high = 0
        add_row = None
        segments, segment, splits, amounts = (
            self._segments,
            self._segment,
            self._splits,
            self._amounts,
        )
        join, keccak = b"".join, _keccak
        ledger_id = _H_LEDGER_ID + self._text(self.ledger_id)
        epoch, custom_head, empty_custom = _EPOCH, _H_CUSTOM_HASH, _H_CUSTOM_HASH + _EMPTY_HASH
        seq = first_seq
        for offset, e in enumerate(entries):
            try:
                p = e.payouts
                fee_atto = e.fee_atto
                key = (fee_atto, p.contributor, p.contributor_charity, p.developer,
                       p.developer_charity, p.operator, p.operator_charity)  # fmt: skip
                fee, payouts = splits.get(key) or amounts(fee_atto, p)
                at = e.finished_at
                if at.tzinfo is None:
                    raise ValueError("ledger times must be timezone-aware")
                delta = at - epoch
                micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
                if not low <= micros < high or add_row is None:
                    period = period_of(micros)
                    if period in self._retired:
                        raise ValueError(f"its period {period} is retired")
                    low, high = period_bounds(period)
                    add_row = by_period.setdefault(period, []).extend
                first = (e.contributor, e.contributor_charity, e.currency)
                second = (e.developer, e.developer_charity, e.end_user, e.enterprise)
                third = (e.node_operator, e.operator_charity, e.outcome)
                private, custom = e.private_fields, e.custom_fields
                public = join(
                    (
                        segments.get(first) or segment(_HEADS_1, first),
                        custom_head + keccak(custom) if custom else empty_custom,
                        segments.get(second) or segment(_HEADS_2, second),
                        fee,
                        _H_FEE_FIAT_NANO, _uint256(e.fee_fiat_nano),
                        _H_FINISHED_AT, micros.to_bytes(8, "big", signed=True),
                        ledger_id,
                        segments.get(third) or segment(_HEADS_3, third),
                        payouts,
                        _H_PRIVATE_HASH, keccak(private),
                        _H_RATE_NANO_PER_COIN, _uint256(e.rate_nano_per_coin),
                        _H_ROW_SEQ, seq.to_bytes(32, "big"),
                        _TAIL,
                    )
                )  # fmt: skip
            except (ValueError, TypeError, OverflowError, AttributeError) as exc:
                raise InvalidEntryError(offset, str(exc)) from exc
            digest = keccak(public)
            add_row((seq, micros, e.enterprise, e.request_id, digest, public, private, custom))
            seq += 1
        return by_period

    def append(self, entries: Sequence[LedgerEntry]) -> list[StoredRow]:
        """Numbers, hashes and inserts ``entries`` in one transaction; returns the rows once
        committed (durable as docs/ledger.md defines). Nothing is inserted when an entry is
        refused (InvalidEntryError) or the database fails."""
        self.rewind()
        batch = self.prepare(entries)
        self.commit(batch)
        return batch.rows

    def prepare(self, entries: Sequence[LedgerEntry]) -> PreparedBatch:
        """Numbers ``entries`` after the last prepared batch and hashes them, without touching
        the database (the writer prepares one batch while the one before commits).
        InvalidEntryError names an entry that can never be written; nothing is numbered."""
        first = self._reserved
        values = self._encode(entries, first)
        self._reserved += len(entries)
        return PreparedBatch(first, len(entries), values)

    def commit(self, batch: PreparedBatch) -> int:
        """Inserts a prepared batch in one transaction (:func:`insert_rows`), creating the
        table of a period it is the first to reach. Batches commit in the order prepared;
        after a failure, :meth:`rewind` and prepare again what was not committed."""
        if batch.first_seq != self._next_seq:
            raise RuntimeError(
                f"batch from row {batch.first_seq} committed out of order (next {self._next_seq})"
            )
        if not batch.count:
            return 0
        created: dict[str, Table] = {}
        with self.engine.begin() as connection:
            for period, values in batch.values.items():
                table = self._live.get(period)
                if table is None:
                    table = created.get(period)
                if table is None:
                    table = created[period] = create_period(
                        connection, period, [*self._live, *created]
                    )
                insert_rows(connection, table.name, values)
        self._live.update(created)
        self._next_seq += batch.count
        return batch.count

    def live_periods(self) -> list[str]:
        """The live periods ("YYYY-MM"), oldest first."""
        return sorted(self._live)

    def drop_period(
        self,
        period: str,
        *,
        first_seq: int,
        last_seq: int,
        rows: int,
        export_name: str,
        export_sha256: str,
        retired_at: datetime,
    ) -> None:
        """Records ``period`` retired (its rows exported as settlement.retention checked) and
        drops its table whole, in one transaction: the one way rows leave the ledger."""
        table = self._live[period]
        remaining = [p for p in self._live if p != period]
        with self.engine.begin() as connection:
            held = connection.execute(
                select(func.count(), func.min(table.c.row_seq), func.max(table.c.row_seq))
            ).one()
            if tuple(held) != (rows, first_seq, last_seq):
                # A row arrived after the export (or one left behind the database's back).
                raise ValueError(
                    f"period {period} holds rows {held[1]}..{held[2]} ({held[0]}), "
                    f"not the {rows} exported ({first_seq}..{last_seq})"
                )
            changed = connection.execute(
                ledger_periods.update()
                .where((ledger_periods.c.period == period) & (ledger_periods.c.state == "live"))
                .values(
                    state="retired",
                    first_seq=first_seq,
                    last_seq=last_seq,
                    row_count=rows,
                    export_name=export_name,
                    export_sha256=export_sha256,
                    retired_at_us=_micros(retired_at),
                )
            )
            if changed.rowcount != 1:
                raise ValueError(f"period {period} is not live")
            for statement in view_ddl(connection.dialect.name, remaining):
                connection.exec_driver_sql(statement)
            connection.exec_driver_sql(f"DROP TABLE {table.name}")
        del self._live[period]
        self._retired.add(period)

    def checkpoint(self) -> None:
        """Copies SQLite's write-ahead log into the database file (PASSIVE: concurrently
        with commits, never blocking them), so that no commit has to (a no-op on
        PostgreSQL). The writer calls it on a thread of its own every CHECKPOINT_ROWS rows:
        a checkpoint takes 100-200 ms, and the commit that crossed SQLite's own threshold
        (wal_autocheckpoint, left as the backstop) would stall the pipeline that long."""
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def rewind(self) -> None:
        """Forgets prepared batches not committed: the next is numbered after the last
        committed row."""
        self._reserved = self._next_seq

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

    def _missing_triggers(self) -> list[str]:
        """The live period tables whose write-once triggers are not all in place."""
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
        dialect = self.engine.dialect.name
        return [
            table.name
            for table in self._live.values()
            if not trigger_names(dialect, table.name) <= present
        ]

    def retired_periods(self) -> list[RetiredPeriod]:
        """The retired periods, oldest first."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(ledger_periods)
                .where(ledger_periods.c.state == "retired")
                .order_by(ledger_periods.c.period)
            ).all()
        return [
            RetiredPeriod(
                r.period,
                int(r.first_seq or 0),
                int(r.last_seq or 0),
                int(r.row_count or 0),
                r.export_name or "",
                r.export_sha256 or "",
            )
            for r in found
        ]

    def verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Re-reads every row: numbering without gaps (but for the rows of retired periods),
        each hash recomputed from the stored columns, payouts summing to the fee, the
        write-once triggers in place."""
        report = VerifyReport(problems=[])
        problems = report.problems
        assert problems is not None
        for table in self._missing_triggers():
            problems.append(Problem(None, f"the write-once triggers of {table} are missing"))
        retired = self.retired_periods()
        # Rows missing from the live ones that fall in each retired period's range: exactly
        # its row count, or rows were deleted (a period's range may hold a few rows of the
        # next one: a row is numbered when written, its period is when it finished).
        absent = dict.fromkeys((r.period for r in retired), 0)

        def missing(first: int, last: int, before: int | None) -> None:
            unexplained = [(first, last)]
            for period, low, high, _, _, _ in retired:
                overlap = min(last, high) - max(first, low) + 1
                if overlap > 0:
                    absent[period] += overlap
                    unexplained = [
                        piece
                        for a, b in unexplained
                        for piece in ((a, min(b, low - 1)), (max(a, high + 1), b))
                        if piece[0] <= piece[1]
                    ]
            for a, b in unexplained:
                where = "before it" if before is not None else "at the end"
                problems.append(Problem(before, f"rows {a} to {b} are missing {where}"))

        expected = 1
        for row in self._all():
            seq = int(str(row["row_seq"]))
            report.rows += 1
            if report.first_seq is None:
                report.first_seq = seq
            if seq > expected:
                missing(expected, seq - 1, seq)
            expected = seq + 1
            report.last_seq = seq
            self._check_row(row, problems)
            if progress is not None and report.rows % PAGE == 0:
                progress(report.rows)
        last_retired = max((r.last_seq for r in retired), default=0)
        if last_retired >= expected:
            missing(expected, last_retired, None)
        for period, _, _, count, _, _ in retired:
            if absent[period] != count:
                problems.append(
                    Problem(
                        None,
                        f"period {period} retired {count} rows but {absent[period]} are "
                        "missing in its range",
                    )
                )
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
            typed[name] = from_micros(int.from_bytes(value, "big", signed=True))
        else:
            typed[name] = value
    extra = set(public) - set(PUBLIC_COLUMNS_V1)
    if extra:
        raise ValueError(f"unknown public columns {sorted(extra)}")
    return typed
