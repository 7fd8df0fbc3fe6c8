"""A throwaway operator CA (and a foreign one) for tests, written to a directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from cgn_common.certs import Authority, Identity, Role, write_issued
from cgn_common.tls import TlsConfig


@dataclass
class Pki:
    """The CA files in ``directory``; ``tls()`` issues a certificate on demand."""

    directory: Path
    authority: Authority

    @classmethod
    def create(cls, directory: Path, name: str = "test CA") -> Pki:
        """Makes a CA in ``directory``."""
        authority = Authority.create(name)
        authority.save(directory / "ca.pem", directory / "ca.key")
        return cls(directory, authority)

    @property
    def ca_file(self) -> str:
        """The CA bundle path."""
        return str(self.directory / "ca.pem")

    def issue(self, role: Role, name: str) -> TlsConfig:
        """Issues (or re-issues) a certificate; returns the TLS config that presents it."""
        files = write_issued(self.authority, Identity(role, name), self.directory)
        return TlsConfig(str(files.cert_file), str(files.key_file), self.ca_file)

    def client_only(self) -> TlsConfig:
        """Trusts this CA, presents no certificate (a miner, a gRPC client)."""
        return TlsConfig(ca_file=self.ca_file)

    @property
    def crl_file(self) -> str:
        """The CA's revocation list (``revoke`` writes it)."""
        return str(self.directory / "crl.pem")

    def revoke(self, *holders: TlsConfig) -> None:
        """Adds the certificates ``holders`` present to the CRL (signs it again when none)."""
        self.authority.update_crl(Path(self.crl_file), [serial_of(h) for h in holders])


def serial_of(tls: TlsConfig) -> int:
    """The serial number of the certificate ``tls`` presents."""
    return x509.load_pem_x509_certificate(Path(tls.cert_file).read_bytes()).serial_number
