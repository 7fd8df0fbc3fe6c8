"""Trust as seen from outside the sandbox's processes: every gRPC port refuses plaintext, the
mutual-TLS ports refuse the wrong certificates, certificates rotate under load, and DService
processes start without the miner's secrets."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cgn_common.certs import Authority, Identity, Role, write_issued
from cgn_common.rpc import open_channel
from cgn_common.tls import TlsConfig
from generated.cgn.admin.v1 import account_admin_service_pb2 as acct_pb
from generated.cgn.admin.v1 import account_admin_service_pb2_grpc as acct_grpc
from miner.runtime import ENV_ALLOW_LIST
from tests.helpers.pki import Pki
from tests.helpers.sandbox import RunningSandbox, descendants
from tests.helpers.wait import until


def _certs(sb: RunningSandbox) -> Path:
    return sb.state_dir / "certs"


def _grpc_ports(sb: RunningSandbox) -> dict[str, str]:
    ports = {"central admin": sb.info["processes"]["central"]["endpoints"]["admin"]}
    for name, address in sb.info["processes"]["node"]["endpoints"].items():
        ports[f"node {name}"] = address
    return ports


async def _health(address: str, tls: TlsConfig) -> str:
    async with open_channel(address, tls) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            name: str = exc.code().name
            return name
    return "OK"


def test_plaintext_is_refused_on_every_grpc_port(sandbox: RunningSandbox) -> None:
    ports = _grpc_ports(sandbox)
    assert len(ports) == 6

    async def check() -> None:
        for name, address in ports.items():
            assert await _health(address, TlsConfig(insecure_plaintext=True)) == "UNAVAILABLE", name
        # The refusals are about plaintext: the public status port answers over TLS.
        assert await _health(ports["node status"], sandbox.tls(None)) == "OK"

    asyncio.run(check())


async def _list_accounts(address: str, tls: TlsConfig) -> str:
    async with open_channel(address, tls) as channel:
        try:
            await acct_grpc.AccountAdminServiceStub(channel).ListAccounts(
                acct_pb.ListAccountsRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            code: str = exc.code().name
            return code
    return "OK"


def test_mutual_tls_ports_refuse_wrong_certificates(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    foreign = Pki.create(tmp_path, "another CA")
    admin = sandbox.info["processes"]["central"]["endpoints"]["admin"]
    central_link = sandbox.info["processes"]["node"]["endpoints"]["central_link"]
    internal = sandbox.info["processes"]["node"]["endpoints"]["internal"]
    gateway = sandbox.tls(Identity(Role.GATEWAY, "sandbox-gateway"))
    operator = sandbox.tls(Identity(Role.OPERATOR, "sandbox-operator"))

    async def check() -> None:
        for address in (admin, central_link, internal):
            assert await _health(address, sandbox.tls(None)) == "UNAVAILABLE"
            other_ca = foreign.issue(Role.OPERATOR, "sandbox-operator")
            assert await _health(address, other_ca) == "UNAVAILABLE"
        assert await _list_accounts(admin, gateway) == "PERMISSION_DENIED"
        assert await _list_accounts(admin, operator) == "OK"

    asyncio.run(check())


def _served_serial(address: str, ca_file: str) -> int:
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serves(address: str, ca_file: str, serial: int) -> bool:
    return _served_serial(address, ca_file) == serial


def _reloaded(sb: RunningSandbox, at_least: int) -> bool:
    return _log_count(sb, "gateway", "tls_channel_reloaded") >= at_least


def _more_than(results: list[int], n: int) -> bool:
    return len(results) > n


def _log_count(sb: RunningSandbox, process: str, event: str) -> int:
    text = (sb.state_dir / "logs" / f"{process}.log").read_text()
    return len(re.findall(f'"event": "{event}"', text))


def test_certificates_rotate_under_load_without_failed_requests(sandbox: RunningSandbox) -> None:
    certs = _certs(sandbox)
    authority = Authority.load(certs / "ca.pem", certs / "ca.key")
    node_files = sorted(certs.glob("node-*.pem"))
    assert len(node_files) == 1
    node_identity = Identity(Role.NODE, node_files[0].stem.removeprefix("node-"))
    status = sandbox.info["processes"]["node"]["endpoints"]["status"]
    ca_file = str(certs / "ca.pem")

    async def scenario() -> None:
        results: list[int] = []
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as http:
            token = await _token(http, sandbox)

            async def load(n: int) -> None:
                while not stop.is_set():
                    body = f"rotation {n} {len(results)}".encode()
                    async with http.post(
                        f"{sandbox.url}/v1/dservices/echo/rotate",
                        data=body,
                        headers={"Authorization": f"Bearer {token}"},
                    ) as response:
                        ok = response.status == 200 and await response.read() == body
                        results.append(200 if ok else response.status)

            loaders = [asyncio.create_task(load(n)) for n in range(4)]
            reloads = _log_count(sandbox, "gateway", "tls_channel_reloaded")
            for round_ in range(1, 3):
                before = len(results)
                node_files = await asyncio.to_thread(write_issued, authority, node_identity, certs)
                gateway_identity = Identity(Role.GATEWAY, "sandbox-gateway")
                await asyncio.to_thread(write_issued, authority, gateway_identity, certs)
                new_serial = x509.load_pem_x509_certificate(
                    node_files.cert_file.read_bytes()
                ).serial_number
                await until(
                    functools.partial(_serves, status, ca_file, new_serial),
                    "the node to serve its new certificate",
                )
                await until(
                    functools.partial(_reloaded, sandbox, reloads + round_),
                    "the gateway to reload its channel",
                )
                await until(
                    functools.partial(_more_than, results, before + 20), "requests after rotating"
                )
            stop.set()
            await asyncio.gather(*loaders)
        assert results
        assert set(results) == {200}, f"{len(results)} requests: {set(results)}"

    asyncio.run(scenario())


async def _token(http: aiohttp.ClientSession, sb: RunningSandbox) -> str:
    async with http.post(
        f"{sb.url}/v1/sessions",
        json={"account_id": sb.info["account_id"], "api_key": sb.info["api_key"]},
    ) as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
    return str(data["token"])


def _environ(pid: int) -> dict[str, str] | None:
    """The process's environment (from /proc/PID/environ), or None once it has exited."""
    try:
        environ: dict[str, str] = psutil.Process(pid).environ()
    except psutil.NoSuchProcess:
        return None
    return environ


def test_dservice_processes_hold_none_of_the_miners_variables(sandbox: RunningSandbox) -> None:
    miner_pid = sandbox.info["processes"]["miner-1"]["pid"]
    miner_env = _environ(miner_pid)
    assert miner_env is not None
    # The miner's key is in its key file, not in its environment; it reaches no DService.
    assert "CGN_MINER_MINER_KEY" not in miner_env
    key = Path(miner_env["CGN_MINER_MINER_KEY_FILE"]).read_text().strip()
    assert key
    dservices = {p.pid for p in psutil.Process(miner_pid).children()}
    children = sorted(descendants(miner_pid))
    assert children, "the miner runs its DServices as child processes"
    for pid in children:
        env = _environ(pid)
        if env is None:
            # A DService's own helper may come and go (MediaGen replaces a worker it killed);
            # the DService processes themselves must be there.
            assert pid not in dservices, f"DService process {pid} vanished"
            continue
        dservice_own = {k for k in env if k.startswith("CGN_DSERVICE_")}
        assert set(env) - dservice_own <= {*ENV_ALLOW_LIST, "CGN_LISTEN"}, sorted(env)
        assert key not in "".join(env.values())
        assert "CGN_MINER_MINER_KEY_FILE" not in env


@pytest.mark.parametrize("role", [Role.GATEWAY, Role.NODE])
def test_the_admin_port_refuses_every_role_but_operator(
    sandbox: RunningSandbox, role: Role
) -> None:
    certs = _certs(sandbox)
    authority = Authority.load(certs / "ca.pem", certs / "ca.key")
    files = write_issued(authority, Identity(role, f"intruder-{role.value}"), certs)
    tls = TlsConfig(str(files.cert_file), str(files.key_file), str(certs / "ca.pem"))
    admin = sandbox.info["processes"]["central"]["endpoints"]["admin"]
    assert asyncio.run(_list_accounts(admin, tls)) == "PERMISSION_DENIED"
