"""The ledger's views over gRPC, in process (Central and a node with its ledger): the public
view to anyone with paging and filters, the owner view only to the enterprise whose row it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from cgn_common.rpc import open_channel
from generated.cgn.ledger.v1 import ledger_service_pb2 as pb
from generated.cgn.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from settlement.groups import day_groups, record_settled
from settlement.ledger import LedgerEntry, Outcome, custom_fields, private_fields
from settlement.rowhash import encode_pairs, keccak256, new_salt
from settlement.split import split_fee
from tests.helpers.cluster import Cluster, Enterprise, start_cluster, stop_cluster
from tests.helpers.pki import Pki
from tests.helpers.wait import until

DAY = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass
class World:
    """A cluster whose ledger holds rows of two enterprises."""

    cluster: Cluster
    alice: Enterprise
    bob: Enterprise
    #: request id -> row_seq
    seqs: dict[str, int]

    def channel(self, port: str = "work") -> grpc.aio.Channel:
        return open_channel(self.cluster.endpoints[port], self.cluster.pki.client_only())


def _entry(enterprise: str, request_id: str, finished_at: datetime, fee: int) -> LedgerEntry:
    return LedgerEntry(
        finished_at=finished_at,
        outcome=Outcome.DELIVERED,
        request_id=request_id,
        enterprise=enterprise,
        end_user="",
        contributor="opr-miner",
        developer="nop-node",
        node_operator="nop-node",
        contributor_charity="",
        developer_charity="",
        operator_charity="",
        currency="EUR",
        fee_fiat_nano=fee // 20_000,
        fee_atto=fee,
        payouts=split_fee(fee),
        rate_nano_per_coin=50_000_000,
        private_fields=private_fields(
            {
                "salt": new_salt(),
                "request_id": request_id,
                "dservice": "echo",
                "request_line": "POST /billed?n=1",
                "request_headers": b"\x00\x00\x00\x0dAuthorization\x00\x00\x00\x0a[redacted]",
                "dservice_fields": encode_pairs([("model", b"small")]),
                "eth_addresses": b"",
                "total_time_us": 12_000,
                "execution_time_us": 9_000,
                "network_latency_us": 3_000,
                "cpu_time_us": 8_000,
                "gpu_time_us": 0,
                "bytes_in": 1000,
                "bytes_out": 1000,
                "attempts": 1,
                "status_code": 200,
            }
        ),
        custom_fields=custom_fields({"cost_center": "marketing"}, new_salt()),
    )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    cluster = await start_cluster(tmp_path, Pki.create(tmp_path / "ca"))
    try:
        await until(lambda: cluster.node.central.connected, "the central link")
        alice = await cluster.enterprise("alice")
        bob = await cluster.enterprise("bob")
        entries = [
            _entry(alice.pseudonym, "alice-1", DAY + timedelta(hours=1), 31_900_000_000_000),
            _entry(bob.pseudonym, "bob-1", DAY + timedelta(hours=2), 1_000_000_000_000),
            _entry(alice.pseudonym, "alice-2", DAY + timedelta(hours=3), 2_000_000_000_000),
            _entry(alice.pseudonym, "alice-3", DAY + timedelta(days=1), 3_000_000_000_000),
            _entry(bob.pseudonym, "bob-2", DAY + timedelta(hours=4), 4_000_000_000_000),
        ]
        assert cluster.node.ledger is not None
        stored = await asyncio.to_thread(cluster.node.ledger.store.append, entries)
        seqs = {e.request_id: s.row_seq for e, s in zip(entries, stored, strict=True)}
        yield World(cluster, alice, bob, seqs)
    finally:
        await stop_cluster(cluster)


def _columns(row: pb.PublicRow) -> dict[str, bytes]:
    return {c.name: c.value for c in row.columns}


async def test_anyone_reads_the_public_view_on_the_status_port(world: World) -> None:
    async with world.channel("status") as channel:
        stub = ledger_grpc.LedgerServiceStub(channel)
        response = await stub.ListRows(pb.ListRowsRequest(), timeout=10)
        rows = list(response.rows)
        assert [r.row_seq for r in rows] == sorted(world.seqs.values())
        assert response.next_page_token == ""
        for row in rows:
            assert row.schema_version == 1
            assert row.ledger_id == world.cluster.node_id
            # The columns are the row as hashed, in hashing order.
            names = [c.name for c in row.columns]
            assert names == sorted(names, key=str.encode)
            assert keccak256(encode_pairs((c.name, c.value) for c in row.columns)) == row.row_hash
        one = await stub.GetRow(pb.GetRowRequest(row_seq=world.seqs["bob-1"]), timeout=10)
        assert one.row == rows[1]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetRow(pb.GetRowRequest(row_seq=999), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # The owner view is not offered on the status port.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetPrivateRow(
                pb.GetPrivateRowRequest(row_seq=1), metadata=world.alice.bearer, timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_pages_follow_the_time_range_and_enterprise_filters(world: World) -> None:
    request = pb.ListRowsRequest(enterprise_pseudonym=world.alice.pseudonym, page_size=1)
    request.start_time.FromDatetime(DAY)
    request.end_time.FromDatetime(DAY + timedelta(days=1))
    seen: list[str] = []
    async with world.channel() as channel:
        stub = ledger_grpc.LedgerServiceStub(channel)
        while True:
            page = await stub.ListRows(request, timeout=10)
            assert len(page.rows) <= 1
            seen += [_columns(r)["enterprise"].decode() for r in page.rows]
            seen += [str(r.row_seq) for r in page.rows]
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    # alice-1 and alice-2 only: alice-3 is the next day, bob's rows are filtered out.
    assert seen == [
        world.alice.pseudonym,
        str(world.seqs["alice-1"]),
        world.alice.pseudonym,
        str(world.seqs["alice-2"]),
    ]


async def test_a_forged_page_token_is_an_invalid_argument(world: World) -> None:
    async with world.channel() as channel:
        stub = ledger_grpc.LedgerServiceStub(channel)
        first = await stub.ListRows(pb.ListRowsRequest(page_size=2), timeout=10)
        assert first.next_page_token
        forged = [
            "not-a-token",
            first.next_page_token[:-2] + ("AA" if first.next_page_token[-2:] != "AA" else "BB"),
        ]
        for token in forged:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListRows(pb.ListRowsRequest(page_size=2, page_token=token), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token
        # A real token with other filters than those it was issued for is refused too.
        with pytest.raises(grpc.aio.AioRpcError) as other_filters:
            await stub.ListRows(
                pb.ListRowsRequest(
                    page_size=2,
                    page_token=first.next_page_token,
                    enterprise_pseudonym=world.bob.pseudonym,
                ),
                timeout=10,
            )
        assert other_filters.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        second = await stub.ListRows(
            pb.ListRowsRequest(page_size=2, page_token=first.next_page_token), timeout=10
        )
        assert [r.row_seq for r in second.rows] == [3, 4]


async def test_the_owner_sees_its_row_with_the_private_columns(world: World) -> None:
    async with world.channel() as channel:
        stub = ledger_grpc.LedgerServiceStub(channel)
        row = await stub.GetPrivateRow(
            pb.GetPrivateRowRequest(row_seq=world.seqs["alice-1"]),
            metadata=world.alice.bearer,
            timeout=10,
        )
        public = _columns(row.row)
        assert public["enterprise"] == world.alice.pseudonym.encode()
        # The private columns and custom fields are what the public hashes commit to.
        private = encode_pairs((c.name, c.value) for c in row.private_columns)
        assert keccak256(private) == public["private_hash"]
        assert keccak256(row.custom_fields_encoding) == public["custom_hash"]
        assert row.request_id == "alice-1"
        assert row.dservice == "echo"
        assert row.request_line == "POST /billed?n=1"
        assert [(h.name, h.value) for h in row.headers] == [("Authorization", b"[redacted]")]
        assert dict(row.dservice_fields) == {"model": "small"}
        assert dict(row.custom_fields) == {"cost_center": "marketing"}
        assert row.usage.cpu_time.ToMicroseconds() == 8_000
        assert row.usage.wall_time.ToMicroseconds() == 9_000
        assert (row.usage.bytes_in, row.usage.bytes_out) == (1000, 1000)
        assert row.total_time.ToMicroseconds() == 12_000
        assert row.network_latency.ToMicroseconds() == 3_000
        assert (row.attempts, row.status_code) == (1, 200)
        assert (row.fee.currency_code, row.fee.nano_units) == ("EUR", 31_900_000_000_000 // 20_000)
        assert int.from_bytes(row.fee_tokens.atto_units_be, "big") == 31_900_000_000_000
        # A DApp looks up the fee and usage of its request by request id.
        by_request = await stub.ListRowsByRequest(
            pb.ListRowsByRequestRequest(request_id="alice-1"),
            metadata=world.alice.bearer,
            timeout=10,
        )
        assert list(by_request.rows) == [row]
        # Nothing is settled yet; once the day's groups are, each entity's state says so.
        assert [(s.pseudonym, s.settled) for s in row.settlements] == [
            (world.alice.pseudonym, False),
            ("opr-miner", False),
            ("nop-node", False),
        ]
        store = world.cluster.node.ledger.store  # type: ignore[union-attr]
        groups = await asyncio.to_thread(day_groups, store, DAY.date())
        await asyncio.to_thread(record_settled, store, groups, b"\x77" * 32)
        settled = await stub.GetPrivateRow(
            pb.GetPrivateRowRequest(row_seq=world.seqs["alice-1"]),
            metadata=world.alice.bearer,
            timeout=10,
        )
        assert [(s.settled, s.transaction_hash) for s in settled.settlements] == [
            (True, b"\x77" * 32)
        ] * 3


async def test_another_enterprises_row_is_not_found(world: World) -> None:
    async with world.channel() as channel:
        stub = ledger_grpc.LedgerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as theirs:
            await stub.GetPrivateRow(
                pb.GetPrivateRowRequest(row_seq=world.seqs["alice-1"]),
                metadata=world.bob.bearer,
                timeout=10,
            )
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetPrivateRow(
                pb.GetPrivateRowRequest(row_seq=999), metadata=world.bob.bearer, timeout=10
            )
        # Not told apart from a row that does not exist.
        assert theirs.value.code() == missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert theirs.value.details() == missing.value.details()
        none = await stub.ListRowsByRequest(
            pb.ListRowsByRequestRequest(request_id="alice-1"),
            metadata=world.bob.bearer,
            timeout=10,
        )
        assert list(none.rows) == []


async def test_the_owner_view_needs_a_session(world: World) -> None:
    async with world.channel() as channel:
        stub = ledger_grpc.LedgerServiceStub(channel)
        calls = [
            stub.GetPrivateRow(pb.GetPrivateRowRequest(row_seq=1), timeout=10),
            stub.ListRowsByRequest(pb.ListRowsByRequestRequest(request_id="alice-1"), timeout=10),
            stub.GetPrivateRow(
                pb.GetPrivateRowRequest(row_seq=1),
                metadata=(("authorization", "Bearer forged.token"),),
                timeout=10,
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
