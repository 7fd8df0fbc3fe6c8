"""Certificates of the operator CA name one identity; anything else is nobody."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from cgn_common.certs import (
    Authority,
    Identity,
    Role,
    identity_of,
    load_crl,
    node_dns_name,
    revoked_serials,
    write_issued,
)
from cgn_common.errors import InvalidArgumentError


def test_an_issued_certificate_names_its_identity_and_a_node_its_dns_name(
    tmp_path: Path,
) -> None:
    authority = Authority.create()
    files = write_issued(authority, Identity(Role.NODE, "acct_1"), tmp_path, ip_addresses=["::1"])
    pem = files.cert_file.read_bytes()
    assert identity_of(pem) == Identity(Role.NODE, "acct_1")
    san = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert node_dns_name("acct_1") in san.value.get_values_for_type(x509.DNSName)
    assert oct(files.key_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "uri",
    ["spiffe://cgn/admin/x", "spiffe://other/central/x", "spiffe://cgn/central/", "https://x"],
)
def test_uris_that_are_not_ours_name_nobody(uri: str) -> None:
    assert Identity.from_uri(uri) is None


def test_a_name_with_a_slash_is_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        Authority.create().issue(Identity(Role.GATEWAY, "a/b"))


def test_a_crl_is_read_only_when_a_ca_of_the_bundle_signed_it(tmp_path: Path) -> None:
    old, new = Authority.create("CGN CA"), Authority.create("CGN CA")  # a CA rotation
    old.update_crl(tmp_path / "old.pem", [7])
    new.update_crl(tmp_path / "new.pem", [9])
    bundle = old.cert_pem + new.cert_pem
    assert revoked_serials(load_crl((tmp_path / "old.pem").read_bytes(), bundle)) == {7}
    assert revoked_serials(load_crl((tmp_path / "new.pem").read_bytes(), bundle)) == {9}
    with pytest.raises(InvalidArgumentError, match="not signed by"):
        load_crl((tmp_path / "new.pem").read_bytes(), old.cert_pem)
    with pytest.raises(InvalidArgumentError, match="not signed by"):
        new.update_crl(tmp_path / "old.pem", [10])
