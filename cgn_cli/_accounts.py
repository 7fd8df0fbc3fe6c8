"""``cgn accounts ban | unban | revoke-sessions | set-payouts | set-body-limit``: operator
actions at Central's admin port (mutual TLS with an operator certificate; ``--sandbox DIR``
takes all of it from a sandbox)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from cgn_cli._admin import AdminClient
from cgn_common.tls import TlsConfig

_T = TypeVar("_T")

#: The sandbox's operator certificate (cgn_cli.sandbox.OPERATOR).
_SANDBOX_OPERATOR = "operator-sandbox-operator"


def _target(
    sandbox: Path | None, central: str, cert: str, key: str, ca: str
) -> tuple[str, TlsConfig]:
    if sandbox is not None:
        info = json.loads((sandbox / "sandbox.json").read_text())
        certs = sandbox / "certs"
        central = central or info["processes"]["central"]["endpoints"]["admin"]
        cert = cert or str(certs / f"{_SANDBOX_OPERATOR}.pem")
        key = key or str(certs / f"{_SANDBOX_OPERATOR}.key")
        ca = ca or str(certs / "ca.pem")
    if not (central and cert and key and ca):
        raise click.UsageError("give --central, --cert, --key and --ca (or --sandbox DIR)")
    return central, TlsConfig(cert, key, ca)


def _run(ctx: click.Context, action: Callable[[AdminClient], Awaitable[_T]]) -> _T:
    central, tls = _target(**ctx.obj)

    async def main() -> _T:
        client = AdminClient(central, tls)
        try:
            return await action(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except grpc.aio.AioRpcError as exc:
        raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None


@click.group()
@click.option(
    "--sandbox",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="A sandbox state directory: its Central and operator certificate.",
)
@click.option("--central", default="", envvar="CGN_ADMIN_CENTRAL", help="Admin host:port.")
@click.option("--cert", default="", envvar="CGN_ADMIN_TLS_CERT_FILE", help="Operator cert.")
@click.option("--key", default="", envvar="CGN_ADMIN_TLS_KEY_FILE", help="Its private key.")
@click.option("--ca", default="", envvar="CGN_ADMIN_TLS_CA_FILE", help="The operator CA.")
@click.pass_context
def accounts(ctx: click.Context, /, **target: Any) -> None:
    """Operator actions on accounts at Central."""
    ctx.obj = target


@accounts.command()
@click.argument("account_id")
@click.option("--reason", default="", help="Recorded with the ban.")
@click.pass_context
def ban(ctx: click.Context, account_id: str, reason: str) -> None:
    """Ban an account: its sessions end on every node; a miner is cut off everywhere."""
    _run(ctx, lambda admin: admin.ban_account(account_id, reason))
    click.echo(f"banned {account_id}")


@accounts.command()
@click.argument("account_id")
@click.pass_context
def unban(ctx: click.Context, account_id: str) -> None:
    """Lift a ban (sessions it ended stay ended)."""
    _run(ctx, lambda admin: admin.unban_account(account_id))
    click.echo(f"unbanned {account_id}")


@accounts.command("revoke-sessions")
@click.argument("account_id")
@click.pass_context
def revoke_sessions(ctx: click.Context, account_id: str) -> None:
    """End every session of an account on every node (log out everywhere)."""
    epoch, told = _run(ctx, lambda admin: admin.revoke_account_sessions(account_id))
    click.echo(
        f"revoked the sessions of {account_id}: session epoch {epoch}; {told} linked node(s) "
        "told now, the others when they next link"
    )


@accounts.command("set-payouts")
@click.argument("account_id")
@click.option("--ethereum-address", default="", help="Where its payouts go (0x + 40 hex).")
@click.option("--charity", "charity_account_id", default=None, help="A CHARITY account id.")
@click.option(
    "--charity-share-ppm",
    type=click.IntRange(0, 1_000_000),
    default=None,
    help="The share of its payouts it gives to the charity, in parts per million.",
)
@click.pass_context
def set_payouts(
    ctx: click.Context,
    account_id: str,
    ethereum_address: str,
    charity_account_id: str | None,
    charity_share_ppm: int | None,
) -> None:
    """Set where an account's payouts go: its address and the charity it gives a share to
    (new ledger rows follow within a minute)."""
    account = _run(
        ctx,
        lambda admin: admin.update_payouts(
            account_id,
            ethereum_address=ethereum_address,
            charity_account_id=charity_account_id,
            charity_share_ppm=charity_share_ppm,
        ),
    )
    click.echo(
        f"{account.account_id}: address {account.ethereum_address or '-'}, charity "
        f"{account.charity_account_id or '-'} ({account.charity_share_ppm} ppm)"
    )


@accounts.command("set-body-limit")
@click.argument("account_id")
@click.argument("max_body_bytes", type=click.IntRange(0, 2**63 - 1))
@click.pass_context
def set_body_limit(ctx: click.Context, account_id: str, max_body_bytes: int) -> None:
    """Set the largest request body, in bytes, an account may send (0: Central's
    default_max_body_bytes). Sessions opened from now on carry it."""
    account = _run(ctx, lambda admin: admin.set_max_body_bytes(account_id, max_body_bytes))
    limit = f"{account.max_body_bytes} bytes" if account.max_body_bytes else "Central's default"
    click.echo(f"{account.account_id}: request bodies up to {limit}")
