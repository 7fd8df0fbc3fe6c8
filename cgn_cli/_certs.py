"""``cgn certs init | issue | revoke``: a development operator CA, the certificates of the
CGN's own processes and the list of revoked ones (docs/security.md says how to make, rotate and
revoke them in production)."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509

from cgn_common.certs import (
    CRL_VALID_DAYS,
    Authority,
    Identity,
    Role,
    crl_number,
    identity_of,
    load_crl,
    revoked_serials,
    write_issued,
)
from cgn_common.errors import CgnError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CRL = "crl.pem"

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
    authority.update_crl(directory / CRL)
    click.echo(f"CRL: {directory / CRL} (empty; give it to Central and nodes as tls_crl_file)")
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


@certs.command()
@_dir_option
@click.option(
    "--crl",
    "crl_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The revocation list to update  [default: DIR/crl.pem]",
)
@click.option("--serial", "serials", multiple=True, help="A serial number in hex (repeatable).")
@click.option(
    "--days",
    type=click.IntRange(1, 365),
    default=CRL_VALID_DAYS,
    show_default=True,
    help="Days until the list's next update.",
)
@click.argument(
    "cert_files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
def revoke(
    directory: Path,
    crl_file: Path | None,
    serials: tuple[str, ...],
    days: int,
    cert_files: tuple[Path, ...],
) -> None:
    """Revoke certificates (CERT_FILES, or --serial) of the CA in --dir.

    Adds them to the CA's signed revocation list; Central and nodes re-read it and refuse a
    listed certificate from its next call. With nothing named, the list is only signed again
    with a fresh next update.
    """
    authority = Authority.load(directory / CA_CERT, directory / CA_KEY)
    crl_file = crl_file or directory / CRL
    wanted: dict[int, str] = {}
    for path in cert_files:
        pem = path.read_bytes()
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise click.UsageError(f"{path}: not a PEM certificate") from exc
        if not authority.issued(cert):
            raise click.UsageError(f"{path} was not issued by the CA in {directory}")
        identity = identity_of(pem)
        wanted[cert.serial_number] = str(identity) if identity else "(no CGN identity)"
    for text in serials:
        wanted.setdefault(_parse_serial(text), "")
    try:
        before = _listed(authority, crl_file)
        crl = authority.update_crl(crl_file, wanted.keys(), valid_days=days)
    except CgnError as exc:
        raise click.UsageError(f"{crl_file}: {exc.message}") from exc
    for serial, who in wanted.items():
        done = "already revoked" if serial in before else "revoked"
        click.echo(f"{done}: {who} serial {serial:x}" if who else f"{done}: serial {serial:x}")
    click.echo(
        f"CRL: {crl_file} (number {crl_number(crl)}, {len(revoked_serials(crl))} certificates "
        f"listed, next update {crl.next_update_utc:%Y-%m-%d %H:%M} UTC)"
    )


def _listed(authority: Authority, crl_file: Path) -> frozenset[int]:
    if not crl_file.exists():
        return frozenset()
    return revoked_serials(load_crl(crl_file.read_bytes(), authority.cert_pem))


def _parse_serial(text: str) -> int:
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        serial = int(digits, 16)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not hexadecimal", param_hint="--serial") from exc
    if serial <= 0:
        raise click.BadParameter("a serial is positive", param_hint="--serial")
    return serial


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
