"""``cgn certs``: init writes an empty signed CRL, revoke adds to it and says what it did."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result
from cryptography import x509

from cgn_cli.main import cli
from cgn_common.certs import Authority, crl_number, load_crl, revoked_serials


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["certs", *args], catch_exceptions=False)


def _crl(directory: Path, name: str = "crl.pem") -> x509.CertificateRevocationList:
    return load_crl((directory / name).read_bytes(), (directory / "ca.pem").read_bytes())


def _serial(cert_file: Path) -> int:
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number


def test_init_writes_an_empty_crl_signed_by_the_new_ca(tmp_path: Path) -> None:
    result = _run("init", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    crl = _crl(tmp_path)
    assert revoked_serials(crl) == frozenset()
    assert crl_number(crl) == 1
    assert oct((tmp_path / "crl.pem").stat().st_mode & 0o777) == "0o644"


def test_revoke_by_file_and_by_serial(tmp_path: Path) -> None:
    assert _run("init", "--dir", str(tmp_path), "--gateway", "gw-1").exit_code == 0
    cert_file = tmp_path / "gateway-gw-1.pem"
    serial = _serial(cert_file)
    result = _run("revoke", "--dir", str(tmp_path), str(cert_file))
    assert result.exit_code == 0, result.output
    assert f"revoked: gateway/gw-1 serial {serial:x}" in result.output
    assert "PRIVATE KEY" not in result.output
    crl = _crl(tmp_path)
    assert revoked_serials(crl) == {serial}
    assert crl_number(crl) == 2
    revoked_at = crl.get_revoked_certificate_by_serial_number(serial)
    assert revoked_at is not None

    # Again, by serial (colon-separated, as openssl prints it): listed once, date kept.
    colons = ":".join(f"{serial:040x}"[i : i + 2] for i in range(0, 40, 2))
    result = _run("revoke", "--dir", str(tmp_path), "--serial", colons)
    assert result.exit_code == 0, result.output
    assert f"already revoked: serial {serial:x}" in result.output
    crl = _crl(tmp_path)
    assert revoked_serials(crl) == {serial}
    assert crl_number(crl) == 3
    again = crl.get_revoked_certificate_by_serial_number(serial)
    assert again is not None
    assert again.revocation_date_utc == revoked_at.revocation_date_utc


def test_revoke_writes_the_crl_named_by_crl(tmp_path: Path) -> None:
    assert _run("init", "--dir", str(tmp_path)).exit_code == 0
    result = _run("revoke", "--dir", str(tmp_path), "--crl", str(tmp_path / "other.pem"))
    assert result.exit_code == 0, result.output
    assert crl_number(_crl(tmp_path, "other.pem")) == 1
    assert crl_number(_crl(tmp_path)) == 1


def test_revoke_refuses_what_it_cannot_mean(tmp_path: Path) -> None:
    assert _run("init", "--dir", str(tmp_path)).exit_code == 0
    foreign = Authority.create("another CA")
    foreign_cert = tmp_path / "foreign.pem"
    foreign_cert.write_bytes(foreign.cert_pem)
    result = _run("revoke", "--dir", str(tmp_path), str(foreign_cert))
    assert result.exit_code == 2
    assert "not issued by the CA" in result.output
    for bad in ("zz", "0"):
        result = _run("revoke", "--dir", str(tmp_path), "--serial", bad)
        assert result.exit_code == 2, bad
    # A CRL another CA signed is not taken over.
    foreign.update_crl(tmp_path / "crl.pem.foreign")
    (tmp_path / "crl.pem").write_bytes((tmp_path / "crl.pem.foreign").read_bytes())
    result = _run("revoke", "--dir", str(tmp_path), "--serial", "1f")
    assert result.exit_code == 2
    assert "not signed by" in result.output
    assert "crl.pem" in result.output
