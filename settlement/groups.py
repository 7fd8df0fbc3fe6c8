"""Settlement groups: what the daily settlement anchors on chain (SPEC sections 8 and 10).

A group is one GMT day's rows of one enterprise (what it owes) or of one beneficiary (what
it is owed: a contributor, developer, node operator or charity). Each group has its row
count, the XOR of its row hashes (the aggregate hash) and its total in atto-CPUcoin: the
enterprise's fees, or the beneficiary's payouts in those rows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from settlement.ledger import PAGE, LedgerStore, StoredRow, decode_pairs, from_micros
from settlement.ledger_schema import ledger_settlements

#: Each beneficiary column and the payout columns it is owed.
_BENEFICIARIES = (
    ("contributor", "payout_contributor"),
    ("developer", "payout_developer"),
    ("node_operator", "payout_operator"),
    ("contributor_charity", "payout_contributor_charity"),
    ("developer_charity", "payout_developer_charity"),
    ("operator_charity", "payout_operator_charity"),
)


class GroupKind(enum.StrEnum):
    """Whose day of rows a group is."""

    ENTERPRISE = "enterprise"
    BENEFICIARY = "beneficiary"


@dataclass
class Group:
    """One settlement group of one day."""

    kind: GroupKind
    pseudonym: str
    day: date
    rows: int = 0
    total_atto: int = 0
    _xor: int = field(default=0, repr=False)

    @property
    def aggregate_hash(self) -> bytes:
        """The XOR of the group's row hashes."""
        return self._xor.to_bytes(32, "big")

    def add(self, row_hash: bytes, amount: int) -> None:
        """Counts one row in the group."""
        self.rows += 1
        self.total_atto += amount
        self._xor ^= int.from_bytes(row_hash, "big")


class GroupCounter:
    """Adds rows to the groups of the days they fall in."""

    def __init__(self) -> None:
        self.groups: dict[tuple[date, GroupKind, str], Group] = {}

    def _group(self, day: date, kind: GroupKind, pseudonym: str) -> Group:
        key = (day, kind, pseudonym)
        found = self.groups.get(key)
        if found is None:
            found = self.groups[key] = Group(kind, pseudonym, day)
        return found

    def add(self, row: StoredRow) -> None:
        """Counts ``row`` in its enterprise's group and once in each beneficiary's."""
        public = decode_pairs(row.public_fields)
        day = _finished_day(public)
        enterprise = public["enterprise"].decode()
        if enterprise:
            self._group(day, GroupKind.ENTERPRISE, enterprise).add(
                row.row_hash, int.from_bytes(public["fee_atto"], "big")
            )
        # A row belongs once to each beneficiary it pays, whatever the roles (the node
        # operator is also the developer of the built-in DServices): counting it twice
        # would cancel it out of the XOR.
        owed: dict[str, int] = {}
        for who, payout in _BENEFICIARIES:
            pseudonym = public[who].decode()
            if pseudonym:
                owed[pseudonym] = owed.get(pseudonym, 0) + int.from_bytes(public[payout], "big")
        for pseudonym, amount in owed.items():
            self._group(day, GroupKind.BENEFICIARY, pseudonym).add(row.row_hash, amount)

    def sorted(self) -> list[Group]:
        """The groups by day, enterprises first, each kind ordered by pseudonym."""
        return sorted(
            self.groups.values(), key=lambda g: (g.day, g.kind != GroupKind.ENTERPRISE, g.pseudonym)
        )


def day_groups(
    store: LedgerStore, day: date, progress: Callable[[int], None] | None = None
) -> list[Group]:
    """Every enterprise group and every beneficiary group of ``day`` (GMT), enterprises
    first, each kind ordered by pseudonym. Rows without a pseudonym (Central could not name
    the account when the row was written) form no group."""
    start = datetime.combine(day, time(), UTC)
    end = start + timedelta(days=1)
    counter = GroupCounter()
    after, seen = 0, 0
    while page := store.rows(start, end, after_seq=after, limit=PAGE):
        for row in page:
            counter.add(row)
        seen += len(page)
        after = page[-1].row_seq
        if progress is not None:
            progress(seen)
    return counter.sorted()


def record_settled(store: LedgerStore, groups: list[Group], transaction_hash: bytes) -> None:
    """Records ``groups`` as settled by ``transaction_hash`` (the mutable payment status of
    SPEC 8: a group recorded again is updated, never duplicated)."""
    with store.engine.begin() as connection:
        for group in groups:
            key = (
                (ledger_settlements.c.group_kind == str(group.kind))
                & (ledger_settlements.c.day == _day_number(group.day))
                & (ledger_settlements.c.pseudonym == group.pseudonym)
            )
            connection.execute(ledger_settlements.delete().where(key))
            connection.execute(
                ledger_settlements.insert().values(
                    group_kind=str(group.kind),
                    day=_day_number(group.day),
                    pseudonym=group.pseudonym,
                    row_count=group.rows,
                    aggregate_hash=group.aggregate_hash,
                    total_atto=group.total_atto,
                    settled=True,
                    transaction_hash=transaction_hash,
                )
            )


def unsettled(store: LedgerStore, groups: list[Group]) -> list[str]:
    """What differs between ``groups`` (computed from rows) and what ``ledger_settlements``
    records as settled: one line per group not recorded, not settled, or recorded with
    another count, aggregate or total. Empty when every group is settled as computed."""
    with store.engine.connect() as connection:
        recorded = {
            (GroupKind(r.group_kind), r.day, r.pseudonym): r
            for r in connection.execute(ledger_settlements.select())
        }
    problems = []
    for group in groups:
        name = f"{group.day} {group.kind} {group.pseudonym}"
        found = recorded.get((group.kind, _day_number(group.day), group.pseudonym))
        if found is None or not found.settled:
            problems.append(f"{name}: not settled")
        elif (found.row_count, bytes(found.aggregate_hash), int(found.total_atto)) != (
            group.rows,
            group.aggregate_hash,
            group.total_atto,
        ):
            problems.append(f"{name}: settled with another count, aggregate or total")
    return problems


def row_settlements(store: LedgerStore, row: StoredRow) -> list[tuple[str, bool, bytes]]:
    """Per entity of ``row`` (its enterprise, then each beneficiary once): (pseudonym, whether
    the entity's group of the row's day is settled, the settling transaction hash or b"")."""
    public = decode_pairs(row.public_fields)
    day = _day_number(_finished_day(public))
    entities: dict[tuple[GroupKind, str], None] = {}
    if public["enterprise"]:
        entities[GroupKind.ENTERPRISE, public["enterprise"].decode()] = None
    for who, _ in _BENEFICIARIES:
        if public[who]:
            entities[GroupKind.BENEFICIARY, public[who].decode()] = None
    if not entities:
        return []
    with store.engine.connect() as connection:
        found = {
            (GroupKind(r.group_kind), r.pseudonym): r
            for r in connection.execute(
                ledger_settlements.select().where(
                    (ledger_settlements.c.day == day)
                    & ledger_settlements.c.pseudonym.in_({p for _, p in entities})
                )
            )
        }
    statuses = []
    for key in entities:
        record = found.get(key)
        if record is not None and record.settled:
            statuses.append((key[1], True, bytes(record.transaction_hash or b"")))
        else:
            statuses.append((key[1], False, b""))
    return statuses


_EPOCH_DAY = date(1970, 1, 1)


def _day_number(day: date) -> int:
    """``ledger_settlements.day``: days since 1970-01-01."""
    return (day - _EPOCH_DAY).days


def _finished_day(public: Mapping[str, bytes]) -> date:
    """The GMT day a row finished, from its public columns."""
    return from_micros(int.from_bytes(public["finished_at"], "big", signed=True)).date()
