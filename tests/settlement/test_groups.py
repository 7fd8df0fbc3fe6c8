"""Settlement groups of a day: one per enterprise and one per beneficiary, each row once per
group, aggregates and totals that match the rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from settlement.groups import GroupKind, day_groups
from settlement.ledger import LedgerStore
from settlement.ledger_db import open_ledger
from settlement.rowhash import xor_aggregate
from tests.settlement.test_ledger_store import DAY, entry


def test_a_days_groups_cover_every_enterprise_and_beneficiary_once(tmp_path: Path) -> None:
    engine = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        store = LedgerStore(engine, "node_1")
        entries = [entry(n, enterprise="p_a" if n % 3 else "p_b") for n in range(9)]
        # The node operator is also the developer here, as for the built-in DServices.
        entries = [replace(e, developer=e.node_operator) for e in entries]
        entries.append(replace(entry(99), finished_at=DAY + timedelta(days=1)))  # next day
        rows = store.append(entries)
        groups = {(g.kind, g.pseudonym): g for g in day_groups(store, DAY.date())}
        assert set(groups) == {
            (GroupKind.ENTERPRISE, "p_a"),
            (GroupKind.ENTERPRISE, "p_b"),
            (GroupKind.BENEFICIARY, "p_miner_op"),
            (GroupKind.BENEFICIARY, "p_node_op"),
        }
        today = rows[:9]
        a = [r for n, r in enumerate(today) if n % 3]
        assert groups[GroupKind.ENTERPRISE, "p_a"].rows == len(a) == 6
        assert groups[GroupKind.ENTERPRISE, "p_a"].aggregate_hash == xor_aggregate(
            r.row_hash for r in a
        )
        fee = entries[0].fee_atto
        assert groups[GroupKind.ENTERPRISE, "p_b"].total_atto == 3 * fee
        operator = groups[GroupKind.BENEFICIARY, "p_node_op"]
        assert operator.rows == 9  # once per row, though it holds two roles
        assert operator.aggregate_hash == xor_aggregate(r.row_hash for r in today)
        payouts = entries[0].payouts
        assert operator.total_atto == 9 * (payouts.developer + payouts.operator)
        miner = groups[GroupKind.BENEFICIARY, "p_miner_op"]
        assert miner.total_atto + operator.total_atto == 9 * fee  # every atto owed to someone
    finally:
        engine.dispose()
