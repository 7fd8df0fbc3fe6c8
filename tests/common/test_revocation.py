"""A revoked CGN certificate is refused from its next call: real gRPC servers on loopback,
mutual TLS from a test CA, CRLs signed with ``cgn_common.certs``."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from central.server import Central
from cgn_common.certs import Role
from cgn_common.errors import InvalidArgumentError
from cgn_common.interceptors import Rule
from cgn_common.rpc import GrpcServer, open_channel
from cgn_common.status import rpc_details
from cgn_common.tls import ClientAuth, RevocationList, TlsConfig
from tests.helpers.cluster import central_config, start_cluster, stop_cluster
from tests.helpers.pki import Pki, serial_of

PEER_METHOD = "/test.Peer/Certificate"
OK = (grpc.StatusCode.OK, "")
REVOKED = (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_REVOKED")
RELOAD_S = 1.0


class _Clock:
    """The revocation list's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class _Server:
    address: str
    pki: Pki
    clock: _Clock
    revocations: RevocationList


async def _certificate(request: bytes, context: Any) -> bytes:
    """Answers with the leaf certificate gRPC put in the call's auth context."""
    pem: bytes = context.auth_context()["x509_pem_cert"][0]
    return pem


def _server(pki: Pki, client_auth: ClientAuth, clock: _Clock) -> tuple[GrpcServer, RevocationList]:
    tls = dataclasses.replace(pki.issue(Role.NODE, "n1"), crl_file=pki.crl_file)
    revocations = RevocationList(tls, "test", check_interval_s=RELOAD_S, clock=clock)
    server = GrpcServer(
        "test-mtls",
        tls,
        client_auth,
        {PEER_METHOD: Rule.peer(Role.GATEWAY)},
        revocations=revocations,
    )
    server.add_handlers(
        grpc.method_handlers_generic_handler(
            "test.Peer", {"Certificate": grpc.unary_unary_rpc_method_handler(_certificate)}
        )
    )
    return server, revocations


@pytest.fixture
async def mtls(tmp_path: Path) -> AsyncIterator[_Server]:
    """A mutual-TLS server following ``pki.crl_file`` (empty at start) on a test clock."""
    pki = Pki.create(tmp_path)
    pki.revoke()
    clock = _Clock()
    server, revocations = _server(pki, ClientAuth.REQUIRED, clock)
    address = await server.start("127.0.0.1:0")
    yield _Server(address, pki, clock, revocations)
    await server.stop(0)


async def _call(channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, str]:
    try:
        await channel.unary_unary(PEER_METHOD)(b"", timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), rpc_details(exc)[0]
    return OK


async def _health(address: str, tls: TlsConfig) -> tuple[grpc.StatusCode, str]:
    async with open_channel(address, tls) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code(), rpc_details(exc)[0]
    return OK


def _contents(path: str) -> bytes:
    """A small file's bytes (a certificate, a CRL): reading it cannot stall the loop."""
    return Path(path).read_bytes()


def _replace(path: str, data: bytes) -> None:
    """Writes ``data`` over ``path`` the way an operator should: a new file, renamed."""
    tmp = f"{path}.new"
    Path(tmp).write_bytes(data)
    os.replace(tmp, path)


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == event]


async def test_grpc_gives_the_leaf_certificate_the_client_presented(mtls: _Server) -> None:
    gateway = mtls.pki.issue(Role.GATEWAY, "g1")
    async with open_channel(mtls.address, gateway) as channel:
        pem = await channel.unary_unary(PEER_METHOD)(b"", timeout=5)
    assert pem == _contents(gateway.cert_file)


async def test_a_revoked_certificate_is_refused_from_its_next_call_and_no_other(
    mtls: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    revoked, kept = mtls.pki.issue(Role.GATEWAY, "g1"), mtls.pki.issue(Role.GATEWAY, "g2")
    async with (
        open_channel(mtls.address, revoked) as revoked_channel,
        open_channel(mtls.address, kept) as kept_channel,
    ):
        assert await _call(revoked_channel) == OK
        assert await _call(kept_channel) == OK
        mtls.pki.revoke(revoked)
        # The file is looked at once per interval: until then the list in force holds.
        mtls.clock.now += RELOAD_S / 2
        assert await _call(revoked_channel) == OK
        mtls.clock.now += RELOAD_S / 2
        with caplog.at_level(logging.WARNING):
            # The connection opened before the revocation: refused all the same.
            assert await _call(revoked_channel) == REVOKED
        assert await _call(kept_channel) == OK
    # A new connection, and a method open to all, are refused too.
    assert await _health(mtls.address, revoked) == REVOKED
    assert await _health(mtls.address, kept) == OK
    refused = _events(caplog, "rpc_refused_revoked")
    assert refused
    assert refused[0].__dict__["serial"] == format(serial_of(revoked), "x")
    assert refused[0].__dict__["peer"] == "gateway/g1"


async def test_revoking_nothing_changes_nothing(
    mtls: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = mtls.pki.issue(Role.GATEWAY, "g1")
    with caplog.at_level(logging.INFO):
        mtls.pki.revoke()  # signed again: a new CRL number, the same (empty) list
        mtls.clock.now += RELOAD_S
        assert await _health(mtls.address, gateway) == OK
    reloaded = _events(caplog, "crl_reloaded")
    assert [(r.__dict__["crl_number"], r.__dict__["revoked"]) for r in reloaded] == [(2, 0)]
    assert mtls.revocations.revoked == frozenset()


async def test_a_call_without_a_client_certificate_is_not_checked(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    pki.revoke(pki.issue(Role.GATEWAY, "g1"))
    server, revocations = _server(pki, ClientAuth.NONE, _Clock())
    address = await server.start("127.0.0.1:0")
    try:
        assert revocations.revoked
        assert await _health(address, pki.client_only()) == OK
    finally:
        await server.stop(0)


async def test_a_bad_crl_on_reload_is_logged_and_the_last_good_list_stays(
    mtls: _Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = mtls.pki
    revoked = pki.issue(Role.GATEWAY, "g1")
    empty_crl = _contents(pki.crl_file)
    pki.revoke(revoked)
    mtls.clock.now += RELOAD_S
    assert await _health(mtls.address, revoked) == REVOKED
    # A CA with the same name but another key signs a list without the revoked certificate.
    impostor = Pki.create(tmp_path / "impostor", "test CA")
    impostor.revoke()
    bad_versions = {
        "another CA's": _contents(impostor.crl_file),
        "an older": empty_crl,  # ours, validly signed, but CRL number 1 < 2
        "a garbled": b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    }
    for what, data in bad_versions.items():
        caplog.clear()
        _replace(pki.crl_file, data)
        mtls.clock.now += RELOAD_S
        with caplog.at_level(logging.ERROR):
            assert await _health(mtls.address, revoked) == REVOKED, what
        failed = _events(caplog, "crl_reload_failed")
        assert len(failed) == 1, what
        assert failed[0].levelno == logging.ERROR
        assert failed[0].__dict__["revoked_in_force"] == 1
    caplog.clear()
    os.unlink(pki.crl_file)
    mtls.clock.now += RELOAD_S
    with caplog.at_level(logging.ERROR):
        assert await _health(mtls.address, revoked) == REVOKED
    assert _events(caplog, "crl_reload_failed")
    assert mtls.revocations.revoked == {serial_of(revoked)}


async def test_after_a_ca_rotation_the_new_cas_crl_is_followed(
    mtls: _Server, tmp_path: Path
) -> None:
    pki = mtls.pki
    revoked = pki.issue(Role.GATEWAY, "g1")
    pki.revoke()  # the old CA's list in force is at number 2
    mtls.clock.now += RELOAD_S
    assert await _health(mtls.address, revoked) == OK
    new_ca = Pki.create(tmp_path / "new", "test CA")
    _replace(pki.ca_file, _contents(pki.ca_file) + new_ca.authority.cert_pem)
    new_ca.authority.update_crl(Path(new_ca.crl_file), [serial_of(revoked)])  # number 1
    _replace(pki.crl_file, _contents(new_ca.crl_file))
    mtls.clock.now += RELOAD_S
    assert await _health(mtls.address, revoked) == REVOKED


def test_a_crl_not_signed_by_the_operator_ca_is_refused_at_start(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "ours")
    impostor = Pki.create(tmp_path / "impostor", "test CA")  # same name, another key
    impostor.revoke()
    node = pki.issue(Role.NODE, "n1")
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("not a CRL")
    cases = {
        "not signed by": impostor.crl_file,
        "cannot read": str(tmp_path / "missing.pem"),
        "not a PEM CRL": str(garbled),
    }
    for message, crl_file in cases.items():
        tls = dataclasses.replace(node, crl_file=crl_file)
        with pytest.raises(InvalidArgumentError, match=message):
            tls.check(need_cert=True)
        with pytest.raises(InvalidArgumentError, match=message):
            GrpcServer("test", tls, ClientAuth.REQUIRED, {})
    pki.revoke()
    dataclasses.replace(node, crl_file=pki.crl_file).check(need_cert=True)


async def test_central_and_the_node_refuse_certificates_their_crl_lists(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path / "ca")
    revoked_central = pki.issue(Role.CENTRAL, "central-9")
    revoked_operator, operator = pki.issue(Role.OPERATOR, "mallory"), pki.issue(Role.OPERATOR, "op")
    pki.revoke(revoked_central, revoked_operator)
    cluster = await start_cluster(tmp_path, pki, tls_crl_file=pki.crl_file)
    config = dataclasses.replace(
        central_config(pki, tmp_path / "central-2.db", replica="central-2"),
        admin_listen="127.0.0.1:0",
        tls_crl_file=pki.crl_file,
    )
    central = Central(config)
    await central.start()
    try:
        assert await _health(cluster.endpoints["central_link"], revoked_central) == REVOKED
        assert await _health(cluster.endpoints["internal"], revoked_central) == REVOKED
        assert await _health(central.admin.address, revoked_operator) == REVOKED
        assert await _health(central.admin.address, operator) == OK
        impostor = Pki.create(tmp_path / "impostor", "test CA")
        impostor.revoke()
        with pytest.raises(InvalidArgumentError, match="not signed by"):
            Central(dataclasses.replace(config, tls_crl_file=impostor.crl_file))
    finally:
        await central.stop()
        await stop_cluster(cluster)
