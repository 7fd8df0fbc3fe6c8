"""The operator CA and the certificates of the CGN's own processes (``cgn certs``).

Every certificate names exactly one identity as a URI SAN, ``spiffe://cgn/<role>/<id>``:
the role (Central, node, gateway, operator) is what the certificate grants, the id says who
(a Central replica, a node's account id, a gateway or operator name). A node's certificate
also carries the DNS name ``<node_id>.node.cgn``: Central dials a node expecting that name, so
the TLS handshake itself proves it reached the node it meant to. Miners hold no certificate of
ours (SPEC section 15): they verify the node with the CA bundle and prove themselves with their
API key.

Keys are ECDSA P-256 (cheap handshakes); everything is made with the ``cryptography`` package.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cgn_common.errors import InvalidArgumentError

TRUST_DOMAIN = "cgn"
_URI_PREFIX = f"spiffe://{TRUST_DOMAIN}/"
_LOOPBACK_NAMES = ("localhost",)
_LOOPBACK_IPS = ("127.0.0.1", "::1")


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


def _write(path: Path, data: bytes, mode: int) -> None:
    """Writes atomically (a reloading process never reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


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
