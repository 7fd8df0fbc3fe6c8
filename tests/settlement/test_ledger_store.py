"""The ledger store on SQLite and PostgreSQL: gap-free numbering, rows that read back as
hashed, write-once enforced by the database itself, and tampering behind the database's back
found by ``verify``, which names the row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from settlement.ledger import (
    LedgerEntry,
    LedgerStore,
    Outcome,
    decode_pairs,
)
from settlement.ledger_db import open_ledger, schema_revision
from settlement.ledger_schema import metadata
from settlement.rowhash import (
    PUBLIC_COLUMNS_V1,
    encode_pairs,
    encode_public_row,
    keccak256,
    row_hash,
    xor_aggregate,
)
from settlement.split import CharityChoices, split_fee

DAY = datetime(2026, 11, 30, tzinfo=UTC)


def entry(n: int, enterprise: str = "p_ent_a", fee_atto: int = 10**18 + 7) -> LedgerEntry:
    """A finished work unit's entry, distinct per ``n``."""
    return LedgerEntry(
        finished_at=DAY + timedelta(seconds=n),
        outcome=Outcome.DELIVERED,
        request_id=f"req_{n}",
        enterprise=enterprise,
        end_user="",
        contributor="p_miner_op",
        developer="p_dev",
        node_operator="p_node_op",
        contributor_charity="",
        developer_charity="",
        operator_charity="",
        currency="EUR",
        fee_fiat_nano=1_234 + n,
        fee_atto=fee_atto,
        payouts=split_fee(fee_atto),
        rate_nano_per_coin=987_654_321,
        private_fields=f"private {n}".encode(),
        custom_fields=b"",
    )


def _store(url: str) -> tuple[Engine, LedgerStore]:
    engine = open_ledger(url)
    return engine, LedgerStore(engine, "node_1")


def test_the_migrations_build_exactly_the_declared_schema(ledger_url: str) -> None:
    engine = open_ledger(ledger_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), metadata)
        assert diff == []
        current, head = schema_revision(engine)
        assert current == head is not None
        open_ledger(ledger_url).dispose()  # a second open upgrades nothing and breaks nothing
    finally:
        engine.dispose()


def test_rows_are_numbered_without_gaps_and_read_back_as_hashed(ledger_url: str) -> None:
    engine, store = _store(ledger_url)
    try:
        first = store.append([entry(n) for n in range(3)])
        second = store.append([entry(n) for n in range(3, 5)])
        assert [r.row_seq for r in first + second] == [1, 2, 3, 4, 5]
        read = store.rows(start=DAY, end=DAY + timedelta(days=1))
        assert read == first + second
        for row in read:
            assert row_hash(row.public) == row.row_hash
            assert row.public["private_hash"] == keccak256(row.private_fields)
        assert store.by_request("req_3") == [second[0]]
        count, aggregate = store.aggregate(DAY, "p_ent_a")
        assert count == 5
        assert aggregate == xor_aggregate(r.row_hash for r in read)
        # A store reopened on the same database numbers on from where it was.
        assert LedgerStore(engine, "node_1").append([entry(9)])[0].row_seq == 6
        with pytest.raises(ValueError, match="holds ledger"):
            LedgerStore(engine, "node_2")
        assert store.verify().ok
    finally:
        engine.dispose()


def test_payouts_that_do_not_sum_to_the_fee_are_refused_and_nothing_is_written(
    ledger_url: str,
) -> None:
    engine, store = _store(ledger_url)
    try:
        bad = entry(1)
        bad = LedgerEntry(**{**bad.__dict__, "fee_atto": bad.fee_atto + 1})
        with pytest.raises(ValueError, match="sum"):
            store.append([entry(0), bad])
        assert store.count() == 0
        assert store.append([entry(0)])[0].row_seq == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_rows_2026_11 SET enterprise = 'p_other' WHERE row_seq = 1",
        "UPDATE ledger_rows_2026_11 SET public_fields = custom_fields",
        "DELETE FROM ledger_rows_2026_11 WHERE row_seq = 2",
        "DELETE FROM ledger_rows_2026_11",
    ],
)
def test_raw_sql_cannot_change_or_delete_a_row(ledger_url: str, statement: str) -> None:
    engine, store = _store(ledger_url)
    try:
        store.append([entry(n) for n in range(3)])
        with pytest.raises(DBAPIError, match="write-once"), engine.begin() as connection:
            connection.execute(text(statement))
        if engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="write-once"), engine.begin() as connection:
                connection.execute(text("TRUNCATE ledger_rows_2026_11"))
        assert store.count() == 3
        assert store.verify().ok
    finally:
        engine.dispose()


def _drop_triggers(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            for name in ("ledger_rows_2026_11_no_update", "ledger_rows_2026_11_no_delete"):
                connection.execute(text(f"DROP TRIGGER {name}"))
        else:
            for name in ("ledger_rows_2026_11_no_change", "ledger_rows_2026_11_no_truncate"):
                connection.execute(text(f"DROP TRIGGER {name} ON ledger_rows_2026_11"))


def test_verify_names_rows_altered_or_deleted_behind_the_databases_back(ledger_url: str) -> None:
    engine, store = _store(ledger_url)
    try:
        store.append([entry(n) for n in range(6)])
        _drop_triggers(engine)
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE ledger_rows_2026_11 SET enterprise = 'p_other' WHERE row_seq = 2")
            )
            public = store.rows()[3].public_fields  # row 4: one byte of a hashed value
            connection.execute(
                text("UPDATE ledger_rows_2026_11 SET public_fields = :v WHERE row_seq = 4"),
                {"v": public.replace(b"p_dev", b"p_deV")},
            )
            connection.execute(
                text("UPDATE ledger_rows_2026_11 SET private_fields = :v WHERE row_seq = 3"),
                {"v": b"changed"},
            )
            connection.execute(text("DELETE FROM ledger_rows_2026_11 WHERE row_seq = 5"))
        report = store.verify()
        found = {(p.row_seq, p.what) for p in report.problems or []}
        assert (None, "the write-once triggers of ledger_rows_2026_11 are missing") in found
        assert (2, "the indexed columns disagree with the hashed ones") in found
        assert (4, "the row hash does not match its public columns") in found
        assert (3, "the private columns do not match private_hash") in found
        assert (6, "rows 5 to 5 are missing before it") in found
        assert report.rows == 5
        assert not report.ok
    finally:
        engine.dispose()


def test_a_sqlite_file_edited_behind_the_databases_back_is_found(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine, store = _store(url)
    store.append([entry(n) for n in range(3)])
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    path = tmp_path / "ledger.db"
    data = path.read_bytes()
    assert data.count(b"EUR") == 3
    path.write_bytes(data.replace(b"EUR", b"USD", 1))  # the file, not SQL: no trigger sees it
    engine, store = _store(url)
    try:
        problems = store.verify().problems or []
        assert [p.what for p in problems] == ["the row hash does not match its public columns"]
        assert problems[0].row_seq is not None
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def property_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerStore]:
    engine, store = _store(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'ledger.db'}")
    yield store
    engine.dispose()


_texts = st.text(max_size=20).map(lambda t: t.encode("utf-8", "replace").decode())


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(_texts, min_size=9, max_size=9),
    fee=st.integers(0, 2**200),
    charity=st.tuples(*[st.integers(0, 1_000_000)] * 3),
    fee_fiat=st.integers(0, 2**256 - 1),
    rate=st.integers(0, 2**256 - 1),
    micros=st.integers(0, 253_402_300_799_999_999),  # to the end of year 9999
    outcome=st.sampled_from(Outcome),
    blobs=st.tuples(st.binary(max_size=64), st.binary(max_size=64)),
)
def test_every_stored_row_is_the_documented_encoding_of_its_values(
    property_store: LedgerStore,
    texts: list[str],
    fee: int,
    charity: tuple[int, int, int],
    fee_fiat: int,
    rate: int,
    micros: int,
    outcome: Outcome,
    blobs: tuple[bytes, bytes],
) -> None:
    """The insert path's unrolled encoder, caches and all, against settlement.rowhash."""
    names = (
        "enterprise", "end_user", "contributor", "developer", "node_operator",
        "contributor_charity", "developer_charity", "operator_charity", "currency",
    )  # fmt: skip
    payouts = split_fee(fee, charity=CharityChoices(*charity))
    given = LedgerEntry(
        finished_at=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros),
        outcome=outcome,
        request_id="req_property",
        fee_fiat_nano=fee_fiat,
        fee_atto=fee,
        payouts=payouts,
        rate_nano_per_coin=rate,
        private_fields=blobs[0],
        custom_fields=blobs[1],
        **dict(zip(names, texts, strict=True)),
    )
    (row,) = property_store.append([given])
    values = {name: given.__dict__.get(name) for name in PUBLIC_COLUMNS_V1}
    values.update(
        {f"payout_{k}": v for k, v in payouts.__dict__.items()},
        outcome=str(outcome),
        ledger_id="node_1",
        row_seq=row.row_seq,
        schema_version=1,
        private_hash=keccak256(blobs[0]),
        custom_hash=keccak256(blobs[1]),
    )
    assert row.public_fields == encode_pairs(encode_public_row(values).items())
    assert decode_pairs(row.public_fields) == encode_public_row(values)


def test_rows_from_the_encoders_caches_match_the_documented_encoding(tmp_path: Path) -> None:
    # Pseudonyms, outcomes and fee splits repeat (served from LedgerStore's caches) and vary
    # (encoded afresh); every row must still be the canonical encoding of its own values.
    engine, store = _store(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        entries = []
        for n in range(60):
            base = entry(n, enterprise=f"p_ent_{n % 3}", fee_atto=10**15 * (1 + n % 4))
            entries.append(
                LedgerEntry(
                    **{
                        **base.__dict__,
                        "contributor": f"p_miner_{n % 5}",
                        "end_user": "p_user_é" if n % 2 else "",
                        "outcome": list(Outcome)[n % 3],
                        "custom_fields": b"" if n % 2 else f"custom {n}".encode(),
                    }
                )
            )
        stored = store.append(entries[:25]) + store.append(entries[25:])
        for row, given in zip(stored, entries, strict=True):
            values = {name: given.__dict__.get(name) for name in PUBLIC_COLUMNS_V1}
            values.update(
                {f"payout_{k}": v for k, v in given.payouts.__dict__.items()},
                ledger_id="node_1",
                row_seq=row.row_seq,
                schema_version=1,
                private_hash=keccak256(given.private_fields),
                custom_hash=keccak256(given.custom_fields),
            )
            assert row.public_fields == encode_pairs(encode_public_row(values).items())
            assert row.row_hash == keccak256(row.public_fields)
        assert store.rows(limit=100) == stored
        assert store.verify().ok
    finally:
        engine.dispose()
