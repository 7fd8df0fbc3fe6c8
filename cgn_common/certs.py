"""The operator CA and the certificates of the CGN's own processes (``cgn certs``).

Every certificate names exactly one identity as a URI SAN, ``spiffe://cgn/<role>/<id>``:
the role (Central, node, gateway, operator) is what the certificate grants, the id says who
(a Central replica, a node's account id, a gateway or operator name). A node's certificate
also carries the DNS name ``<node_id>.node.cgn``: Central dials a node expecting that name, so
the TLS handshake itself proves it reached the node it meant to. Miners hold no certificate of
ours (SPEC section 15): they verify the node with the CA bundle and prove themselves with their
API key.

Revoked certificates are listed in a CRL the CA signs (``crl.pem`` beside the CA): processes
re-read it and refuse a listed certificate on its next call (``cgn_common/tls.py``).

Keys are ECDSA P-256 (cheap handshakes); everything is made with the ``cryptography`` package.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cgn_common.errors import InvalidArgumentError

TRUST_DOMAIN = "cgn"
_URI_PREFIX = f"spiffe://{TRUST_DOMAIN}/"
_LOOPBACK_NAMES = ("localhost",)
_LOOPBACK_IPS = ("127.0.0.1", "::1")

#: How long a signed CRL says it is current (its nextUpdate). Processes keep enforcing a CRL
#: past it and log ``crl_past_next_update``: re-sign it (``cgn certs revoke`` with nothing new
#: to revoke does) before then.
CRL_VALID_DAYS = 30


class Role(enum.StrEnum):
    """What a certificate of the operator CA lets its holder be."""

    CENTRAL = "central"
    NODE = "node"
    GATEWAY = "gateway"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Identity:
    """Who a peer certificate says its holder is."""

    role: Role
    name: str

    @property
    def uri(self) -> str:
        """The certificate's URI SAN."""
        return f"{_URI_PREFIX}{self.role.value}/{self.name}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity | None:
        """Parses a URI SAN; None when it is not one of ours."""
        if not uri.startswith(_URI_PREFIX):
            return None
        role, _, name = uri[len(_URI_PREFIX) :].partition("/")
        try:
            return cls(Role(role), name) if name and "/" not in name else None
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.role.value}/{self.name}"


def node_dns_name(node_id: str) -> str:
    """The DNS name a node's certificate carries and Central checks when it dials."""
    return f"{node_id.lower()}.node.{TRUST_DOMAIN}"


def _check_name(name: str) -> None:
    if not name or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidArgumentError(f"certificate name {name!r}: use letters, digits, '-_.'")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its key, able to issue process certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, common_name: str = "CGN development CA", valid_days: int = 3650) -> Authority:
        """Makes a new self-signed CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> Authority:
        """Reads a CA written by :meth:`save`."""
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgumentError(f"{key_file}: not an EC private key")
        return cls(x509.load_pem_x509_certificate(cert_file.read_bytes()), key)

    def save(self, cert_file: Path, key_file: Path) -> None:
        """Writes the CA certificate (0644) and key (0600)."""
        _write(cert_file, self.cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(key_file, _key_pem(self.key), 0o600)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM (what every process trusts)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        identity: Identity,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        valid_days: int = 90,
    ) -> tuple[bytes, bytes]:
        """Issues a certificate for ``identity``; returns (cert PEM, key PEM).

        The certificate serves both ends of a TLS connection (server and client auth), since
        the CGN's processes dial each other in both directions. Loopback names are always
        included so that a development setup works without options.
        """
        _check_name(identity.name)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        dns = [*_LOOPBACK_NAMES, *dns_names]
        if identity.role is Role.NODE:
            dns.append(node_dns_name(identity.name))
        names += [x509.DNSName(d) for d in dict.fromkeys(dns)]
        try:
            ips = [ipaddress.ip_address(a) for a in dict.fromkeys([*_LOOPBACK_IPS, *ip_addresses])]
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from exc
        names += [x509.IPAddress(ip) for ip in ips]
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role.value),
                        x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether this CA signed ``cert``."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def update_crl(
        self, crl_file: Path, revoke: Iterable[int] = (), *, valid_days: int = CRL_VALID_DAYS
    ) -> x509.CertificateRevocationList:
        """Signs and writes the CRL: the serials ``crl_file`` lists already, plus ``revoke``.

        The CRL number goes up by one and the next update is ``valid_days`` away. A serial
        listed already keeps its revocation date. The file is replaced atomically, mode 0644 (a
        CRL is public). An existing ``crl_file`` this CA did not sign is an error.
        """
        listed: dict[int, datetime.datetime] = {}
        number = 0
        if crl_file.exists():
            old = load_crl(crl_file.read_bytes(), self.cert_pem)
            listed = {entry.serial_number: entry.revocation_date_utc for entry in old}
            number = crl_number(old)
        now = _now()
        for serial in revoke:
            listed.setdefault(serial, now)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now)
            .next_update(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.CRLNumber(number + 1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        for serial, revoked_at in sorted(listed.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(revoked_at)
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        _write(crl_file, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return crl


def load_crl(crl_pem: bytes, ca_bundle_pem: bytes) -> x509.CertificateRevocationList:
    """Reads a PEM CRL and checks that a CA of ``ca_bundle_pem`` signed it.

    Raises InvalidArgumentError otherwise: a CRL nobody we trust signed could leave out a
    revoked certificate, so it is never taken for an empty list.
    """
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
        cas = x509.load_pem_x509_certificates(ca_bundle_pem)
    except ValueError as exc:
        raise InvalidArgumentError(f"not a PEM CRL and CA bundle: {exc}") from exc
    for ca in cas:
        key = ca.public_key()
        if (
            ca.subject == crl.issuer
            and isinstance(key, ec.EllipticCurvePublicKey)
            and crl.is_signature_valid(key)
        ):
            return crl
    raise InvalidArgumentError("the CRL is not signed by a CA of the bundle")


def revoked_serials(crl: x509.CertificateRevocationList) -> frozenset[int]:
    """The serial numbers a CRL lists."""
    return frozenset(entry.serial_number for entry in crl)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL's sequence number (0 when it has none)."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _write(path: Path, data: bytes, mode: int) -> None:
    """Writes atomically (a reloading process never reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_key_file(path: Path, secret: bytes) -> None:
    """Writes a secret (private key, API key) atomically, readable by its owner only."""
    _write(path, secret, 0o600)


@dataclass(frozen=True)
class IssuedFiles:
    """Where one issued certificate was written."""

    cert_file: Path
    key_file: Path


def write_issued(
    authority: Authority,
    identity: Identity,
    directory: Path,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    valid_days: int = 90,
) -> IssuedFiles:
    """Issues a certificate and writes ``<role>-<name>.pem`` and ``.key`` into ``directory``.

    The key is written before the certificate so a process reloading on the certificate's
    change always finds a matching key; both are replaced atomically.
    """
    cert_pem, key_pem = authority.issue(
        identity, dns_names=dns_names, ip_addresses=ip_addresses, valid_days=valid_days
    )
    stem = f"{identity.role.value}-{identity.name}"
    files = IssuedFiles(directory / f"{stem}.pem", directory / f"{stem}.key")
    _write(files.key_file, key_pem, 0o600)
    _write(files.cert_file, cert_pem, 0o644)
    return files


def identity_of(cert_pem: bytes) -> Identity | None:
    """The CGN identity a PEM certificate names, or None."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = [
        i
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if (i := Identity.from_uri(uri)) is not None
    ]
    return found[0] if len(found) == 1 else None
