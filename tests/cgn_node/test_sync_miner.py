"""A miner written from docs/miner-protocol.md alone (tests/helpers/sync_miner.py, blocking
gRPC in a thread) is served correctly by the node: acks, NACKs, work, WorkSlots, Drain."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cgn_common.types import AccountKind, Tier
from cgn_node.work import HttpRequest, WorkUnit
from tests.helpers.cluster import Cluster, start_cluster, stop_cluster
from tests.helpers.pki import Pki
from tests.helpers.sync_miner import SyncMiner
from tests.helpers.wait import until


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    running = await start_cluster(tmp_path, Pki.create(tmp_path / "ca"), ack_deadline_ms=2000)
    await until(lambda: running.node.central.connected, "the central link")
    yield running
    await stop_cluster(running)


async def _start(
    cluster: Cluster, name: str, nack_path: str = "/malformed"
) -> tuple[SyncMiner, threading.Thread]:
    created = await cluster.central.accounts.create(
        AccountKind.MINER, name, tier=Tier.TIER_2_DATACENTER
    )
    ca_pem = await asyncio.to_thread(Path(cluster.pki.ca_file).read_bytes)
    miner = SyncMiner(
        cluster.endpoints["miner_link"],
        ca_pem,
        created.account.account_id,
        created.api_key,
        nack_path=nack_path,
    )
    thread = threading.Thread(target=miner.serve, name=f"sync-miner-{name}", daemon=True)
    thread.start()
    await until(miner.welcomed.is_set, "the welcome")
    await until(
        lambda: miner.miner_id in {m.miner_id for m in cluster.node.broker.miners()},
        "the miner to join the pool",
    )
    return miner, thread


def _unit(work_id: str, path: str = "/x", body: bytes = b"") -> WorkUnit:
    return WorkUnit(
        work_id,
        "echo",
        "acct_enterprise",
        (Tier.TIER_2_DATACENTER,),
        HttpRequest("POST", path, "", (), body),
        deadline=time.monotonic() + 20,
    )


async def test_a_miner_written_from_the_protocol_doc_is_served(cluster: Cluster) -> None:
    first, _ = await _start(cluster, "sync-1")
    outcomes = await asyncio.gather(
        *(cluster.node.broker.submit(_unit(f"w{i}", body=b"%d" % i)) for i in range(6))
    )
    assert [o.result.body for o in outcomes] == [b"%d" % i for i in range(6)]
    assert sorted(first.served) == [f"w{i}" for i in range(6)]

    # A NACKed assignment goes to another miner; the NACKing miner stays.
    second, _ = await _start(cluster, "sync-2", nack_path="")
    for n in range(4):  # round robin: at least one lands on the NACKing miner first
        outcome = await cluster.node.broker.submit(_unit(f"odd-{n}", path="/malformed"))
        assert outcome.miner_id == second.miner_id
    assert first.nacked
    assert {m.miner_id for m in cluster.node.broker.miners()} == {
        first.miner_id,
        second.miner_id,
    }


async def test_drain_ends_the_miners_stream_after_its_goodbye(cluster: Cluster) -> None:
    miner, thread = await _start(cluster, "sync-drain")
    await cluster.node.broker.submit(_unit("before"))
    await cluster.node.miner_link.drain(grace_s=2)
    assert miner.drained.is_set()
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()
    assert cluster.node.broker.miners() == []
