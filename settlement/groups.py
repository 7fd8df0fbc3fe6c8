"""Settlement groups: what the daily settlement anchors on chain (SPEC sections 8 and 10).

A group is one GMT day's rows of one enterprise (what it owes) or of one beneficiary (what
it is owed: a contributor, developer, node operator or charity). Each group has its row
count, the XOR of its row hashes (the aggregate hash) and its total in atto-CPUcoin: the
enterprise's fees, or the beneficiary's payouts in those rows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from settlement.ledger import PAGE, LedgerStore, decode_pairs

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


def day_groups(
    store: LedgerStore, day: date, progress: Callable[[int], None] | None = None
) -> list[Group]:
    """Every enterprise group and every beneficiary group of ``day`` (GMT), enterprises
    first, each kind ordered by pseudonym. Rows without a pseudonym (Central could not name
    the account when the row was written) form no group."""
    start = datetime.combine(day, time(), UTC)
    end = start + timedelta(days=1)
    groups: dict[tuple[GroupKind, str], Group] = {}

    def group(kind: GroupKind, pseudonym: str) -> Group:
        key = (kind, pseudonym)
        found = groups.get(key)
        if found is None:
            found = groups[key] = Group(kind, pseudonym, day)
        return found

    after, seen = 0, 0
    while page := store.rows(start, end, after_seq=after, limit=PAGE):
        for row in page:
            public = decode_pairs(row.public_fields)
            enterprise = public["enterprise"].decode()
            if enterprise:
                group(GroupKind.ENTERPRISE, enterprise).add(
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
                group(GroupKind.BENEFICIARY, pseudonym).add(row.row_hash, amount)
        seen += len(page)
        after = page[-1].row_seq
        if progress is not None:
            progress(seen)
    return sorted(groups.values(), key=lambda g: (g.kind != GroupKind.ENTERPRISE, g.pseudonym))
