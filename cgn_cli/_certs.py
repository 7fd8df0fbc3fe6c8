"""``cgn certs init | issue``: a development operator CA and the certificates of the CGN's
own processes (docs/security.md says how to make and rotate them in production)."""

from __future__ import annotations

from pathlib import Path

import click

from cgn_common.certs import Authority, Identity, Role, write_issued
from cgn_common.errors import CgnError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("certs"),
    show_default=True,
    help="Where the CA and the certificates live.",
)
_san_options = [
    click.option("--dns", multiple=True, help="Extra DNS name (repeatable)."),
    click.option("--ip", multiple=True, help="Extra IP address (repeatable)."),
    click.option("--days", type=click.IntRange(1, 825), default=90, show_default=True),
]


def _with_sans(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_san_options):
        f = option(f)
    return f


@click.group()
def certs() -> None:
    """Make the operator CA and process certificates."""


@certs.command()
@_dir_option
@click.option("--central", "centrals", multiple=True, default=["central-1"], show_default=True)
@click.option("--node", "nodes", multiple=True, help="A node's account id (repeatable).")
@click.option("--gateway", "gateways", multiple=True, default=["gateway-1"], show_default=True)
@click.option("--operator", "operators", multiple=True, default=["operator"], show_default=True)
@_with_sans
def init(
    directory: Path,
    centrals: tuple[str, ...],
    nodes: tuple[str, ...],
    gateways: tuple[str, ...],
    operators: tuple[str, ...],
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    days: int,
) -> None:
    """Create a development CA and one certificate per named process."""
    if (directory / CA_KEY).exists():
        raise click.UsageError(f"{directory / CA_KEY} exists: use `cgn certs issue`")
    authority = Authority.create()
    authority.save(directory / CA_CERT, directory / CA_KEY)
    click.echo(f"CA: {directory / CA_CERT} (key {directory / CA_KEY}, mode 0600)")
    wanted = [
        *(Identity(Role.CENTRAL, n) for n in centrals),
        *(Identity(Role.NODE, n) for n in nodes),
        *(Identity(Role.GATEWAY, n) for n in gateways),
        *(Identity(Role.OPERATOR, n) for n in operators),
    ]
    for identity in wanted:
        _issue(authority, identity, directory, dns, ip, days)


@certs.command()
@_dir_option
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--name", required=True, help="Replica, node account id, gateway or operator.")
@_with_sans
def issue(
    directory: Path,
    role: str,
    name: str,
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    days: int,
) -> None:
    """Issue (or renew) one certificate from the CA in --dir."""
    authority = Authority.load(directory / CA_CERT, directory / CA_KEY)
    _issue(authority, Identity(Role(role), name), directory, dns, ip, days)


def _issue(
    authority: Authority,
    identity: Identity,
    directory: Path,
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    days: int,
) -> None:
    try:
        files = write_issued(
            authority, identity, directory, dns_names=dns, ip_addresses=ip, valid_days=days
        )
    except CgnError as exc:
        raise click.UsageError(exc.message) from exc
    click.echo(f"{identity}: {files.cert_file} (key {files.key_file})")
