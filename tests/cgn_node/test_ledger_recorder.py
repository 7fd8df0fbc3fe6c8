"""The node's ledger recorder with a real Central: pseudonyms, payout addresses and charity
choices come from Central's answers, and the row's split honours them to the atto."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cgn_cli._admin import AdminClient
from cgn_common.certs import Role
from cgn_common.errors import InvalidArgumentError
from cgn_common.types import AccountKind, Tier
from cgn_node.recorder import FinishedWork
from settlement.ledger import decode_pairs
from settlement.split import CharityChoices, split_fee
from tests.helpers.cluster import start_cluster, stop_cluster
from tests.helpers.pki import Pki
from tests.helpers.wait import until

MINER_ADDRESS = "0x" + "11" * 20
CHARITY_ADDRESS = "0x" + "22" * 20


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "ca")


async def test_a_row_pays_the_miners_chosen_charity_its_share(tmp_path: Path, pki: Pki) -> None:
    cluster = await start_cluster(tmp_path, pki)
    try:
        accounts = cluster.central.accounts
        enterprise = (await accounts.create(AccountKind.ENTERPRISE, "e")).account
        charity = (await accounts.create(AccountKind.CHARITY, "a charity")).account
        miner = (await accounts.create(AccountKind.MINER, "m", tier=Tier.TIER_2_DATACENTER)).account
        await accounts.update_payouts(charity.account_id, ethereum_address=CHARITY_ADDRESS)
        await accounts.update_payouts(
            miner.account_id,
            ethereum_address=MINER_ADDRESS,
            charity_account_id=charity.account_id,
            charity_share_ppm=100_000,
        )
        with pytest.raises(InvalidArgumentError, match="not a charity"):
            await accounts.update_payouts(
                miner.account_id, charity_account_id=enterprise.account_id
            )
        await until(lambda: cluster.node.central.connected, "the central link")
        await cluster.node.recorder.record(
            FinishedWork(
                work_id="work_1",
                account_id=enterprise.account_id,
                dservice="echo",
                miner_id=miner.account_id,
                tier=Tier.TIER_2_DATACENTER,
                status_code=200,
                attempts=1,
                total_time_us=2_000,
                execution_time_us=1_500,
                cpu_time_us=250_000,
                bytes_in=10_000,
                bytes_out=10_000,
                request_id="req_charity",
                method="POST",
                path="/x",
                headers=(("Cookie", b"a=b"),),
            )
        )
        assert cluster.node.ledger is not None
        await cluster.node.ledger.wait_durable()
        (row,) = cluster.node.ledger.store.by_request("req_charity")
        public = row.public
        assert public["contributor"] == miner.pseudonym.encode()
        assert public["enterprise"] == enterprise.pseudonym.encode()
        assert public["contributor_charity"] == charity.pseudonym.encode()
        assert public["developer_charity"] == public["operator_charity"] == b""
        fee = int.from_bytes(public["fee_atto"], "big")
        assert fee > 0
        expected = split_fee(fee, charity=CharityChoices(contributor_ppm=100_000))
        assert int.from_bytes(public["payout_contributor_charity"], "big") == (
            expected.contributor_charity
        )
        assert expected.contributor_charity > 0
        addresses = decode_pairs(decode_pairs(row.private_fields)["eth_addresses"])
        assert addresses["contributor"] == bytes.fromhex("11" * 20)
        assert addresses["contributor_charity"] == bytes.fromhex("22" * 20)
        assert cluster.node.ledger.store.verify().ok
    finally:
        await stop_cluster(cluster)


async def test_the_admin_api_sets_payouts_and_refuses_what_it_cannot_change(
    tmp_path: Path, pki: Pki
) -> None:
    cluster = await start_cluster(tmp_path, pki)
    admin = AdminClient(cluster.central.admin.address, pki.issue(Role.OPERATOR, "op"))
    try:
        charity_id, _ = await admin.create_account(AccountKind.CHARITY, "c")
        miner_id, _ = await admin.create_account(
            AccountKind.MINER, "m", tier=Tier.TIER_2_DATACENTER
        )
        account = await admin.update_payouts(
            miner_id,
            ethereum_address=MINER_ADDRESS,
            charity_account_id=charity_id,
            charity_share_ppm=250_000,
        )
        assert (account.ethereum_address, account.charity_account_id) == (
            MINER_ADDRESS,
            charity_id,
        )
        assert account.charity_share_ppm == 250_000
        unchanged = await admin.update_payouts(miner_id)  # nothing given: nothing changes
        assert unchanged.charity_share_ppm == 250_000
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await admin.update_payouts(miner_id, ethereum_address="0x12")
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await admin.close()
        await stop_cluster(cluster)
