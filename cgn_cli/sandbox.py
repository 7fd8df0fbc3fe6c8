"""``cgn sandbox``: a complete local CGN on loopback.

Starts Central, one node, N miners serving the built-in ``echo`` DService (and every
developer DService given with ``--dservice PATH/dservice.toml``) and the gateway,
each as its own process on 127.0.0.1 port 0; creates the demo enterprise account on a fresh
state directory; checks the whole path with a real request; writes ``sandbox.json``
(mode 0600); prints ready-to-paste curl lines; and stops every process on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from cgn_cli._admin import AdminClient
from cgn_common.certs import Authority, Identity, Role, write_issued, write_key_file
from cgn_common.descriptor import load_descriptor
from cgn_common.errors import (
    CgnError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from cgn_common.logs import log_event
from cgn_common.process import dies_with_this_process
from cgn_common.ready import write_json_atomic
from cgn_common.signals import wait_for_stop
from cgn_common.tasks import Supervisor
from cgn_common.tls import TlsConfig
from cgn_common.types import AccountKind, Tier

_log = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0

CENTRAL = Identity(Role.CENTRAL, "central-1")
OPERATOR = Identity(Role.OPERATOR, "sandbox-operator")
GATEWAY = Identity(Role.GATEWAY, "sandbox-gateway")
_POLL_S = 0.05


@dataclass(eq=False)
class Child:
    """One process of the sandbox."""

    name: str
    process: asyncio.subprocess.Process
    ready_file: Path
    log_file: Path
    ready: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the child's log, for error messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def _until(predicate: Any, what: str, timeout_s: float = _START_TIMEOUT_S) -> None:
    """Polls an async predicate until true, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(_POLL_S)
    raise UnavailableError(f"sandbox: timed out waiting for {what}")


class Sandbox:
    """The sandbox's processes and state."""

    def __init__(
        self,
        state_dir: Path,
        miners: int = 2,
        miner_tier: Tier = Tier.TIER_1_PRIVATE,
        dservices: str = "echo,mediagen",
        nodes: int = 1,
        descriptors: Sequence[Path] = (),
        cors_origins: Sequence[str] = (),
    ) -> None:
        self.state_dir = state_dir
        #: Origins whose browser pages may call the gateways (``--cors-origin``).
        self.cors_origins = list(cors_origins)
        if any("," in origin for origin in self.cors_origins):
            raise InvalidArgumentError("a --cors-origin may not contain ','")
        self.nodes = nodes
        self.miners = miners
        self.miner_tier = miner_tier
        self.dservices = dservices
        #: Developers' DServices (``--dservice PATH``), checked before anything starts.
        self.descriptor_paths = [p.resolve() for p in descriptors]
        self.descriptors = [load_descriptor(p) for p in self.descriptor_paths]
        if any("," in str(p) for p in self.descriptor_paths):
            raise InvalidArgumentError("a --dservice path may not contain ','")
        names = self.dservice_names
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"a DService name is given twice: {names}")
        self.children: list[Child] = []
        self.stopping = False
        self.miner_restarts = 0
        self.node_restarts = 0
        #: Processes restarted when they exit: name -> (cgn arguments, environment).
        self._restartable: dict[str, tuple[list[str], dict[str, str]]] = {}
        self._info: dict[str, Any] = {}
        self._state_file = state_dir / "state.json"
        self.certs_dir = state_dir / "certs"

    @property
    def dservice_names(self) -> list[str]:
        """Every DService the sandbox's miners offer: built-in ones, then the developer's."""
        return [n for n in self.dservices.split(",") if n] + [d.name for d in self.descriptors]

    def _load_state(self) -> dict[str, Any]:
        """Account ids kept between runs (no secrets: keys live in their key files)."""
        if self._state_file.exists():
            data: dict[str, Any] = json.loads(self._state_file.read_text())
            return data
        old = self.state_dir / "secrets.json"  # sandboxes before key files kept keys here
        if not old.exists():
            return {}
        data = json.loads(old.read_text())
        state: dict[str, Any] = {"miners": []}
        if "enterprise_id" in data:
            state["enterprise_id"] = data["enterprise_id"]
        if "node_id" in data:
            state["node_ids"] = [data["node_id"]]
        for index, (miner_id, key) in enumerate(data.get("miners", []), start=1):
            write_key_file(self._miner_key_file(index), key.encode())
            state["miners"].append(miner_id)
        self._save_state(state)
        old.unlink()
        return state

    def _save_state(self, data: dict[str, Any]) -> None:
        write_json_atomic(self._state_file, data, mode=0o600)

    def _miner_key_file(self, index: int) -> Path:
        return self.state_dir / f"miner-{index}" / "miner.key"

    @staticmethod
    def _node_name(index: int) -> str:
        return "node" if index == 1 else f"node-{index}"

    async def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        ready_file = self.state_dir / "run" / f"{name}.ready.json"
        ready_file.unlink(missing_ok=True)
        log_file = self.state_dir / "logs" / f"{name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log:  # noqa: ASYNC230 - a local file, opened once
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cgn_cli",
                *args,
                "--ready-file",
                str(ready_file),
                env={**os.environ, **env},
                stdout=log,
                stderr=log,
                preexec_fn=dies_with_this_process(),
                cwd=self.state_dir,
            )
        child = Child(name, process, ready_file, log_file)
        self.children.append(child)
        log_event(_log, "sandbox_process_started", name=name, pid=process.pid)
        return child

    async def _wait_ready(self, child: Child) -> dict[str, Any]:
        async def ready() -> bool:
            if child.process.returncode is not None:
                raise FailedPreconditionError(
                    f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}"
                )
            return child.ready_file.exists()

        await _until(ready, f"{child.name} to serve")
        child.ready = json.loads(child.ready_file.read_text())
        return child.ready

    def _certificates(self) -> Authority:
        """The sandbox's operator CA (made once) and fresh certificates for its processes."""
        ca_cert, ca_key = self.certs_dir / "ca.pem", self.certs_dir / "ca.key"
        if ca_key.exists():
            authority = Authority.load(ca_cert, ca_key)
        else:
            authority = Authority.create("CGN sandbox CA")
            authority.save(ca_cert, ca_key)
        if not (self.certs_dir / "crl.pem").exists():
            authority.update_crl(self.certs_dir / "crl.pem")
        for identity in (CENTRAL, OPERATOR, GATEWAY):
            write_issued(authority, identity, self.certs_dir)
        return authority

    def tls_env(self, prefix: str, identity: Identity | None) -> dict[str, str]:
        """TLS variables for a process: the CA bundle, and its certificate when it has one."""
        env = {f"{prefix}TLS_CA_FILE": str(self.certs_dir / "ca.pem")}
        if identity is not None:
            stem = self.certs_dir / f"{identity.role.value}-{identity.name}"
            env[f"{prefix}TLS_CERT_FILE"] = f"{stem}.pem"
            env[f"{prefix}TLS_KEY_FILE"] = f"{stem}.key"
            if identity.role in (Role.CENTRAL, Role.NODE):
                env[f"{prefix}TLS_CRL_FILE"] = str(self.certs_dir / "crl.pem")
        return env

    def operator_tls(self) -> TlsConfig:
        """The sandbox operator's TLS material (admin calls to Central)."""
        env = self.tls_env("", OPERATOR)
        return TlsConfig(env["TLS_CERT_FILE"], env["TLS_KEY_FILE"], env["TLS_CA_FILE"])

    async def start(self) -> dict[str, Any]:
        """Starts everything and returns the sandbox.json content."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        state = self._load_state()
        self._save_state(state)
        authority = await asyncio.to_thread(self._certificates)
        db = self.state_dir / "central.db"
        central = await self._spawn(
            "central",
            ["central"],
            {
                "CGN_CENTRAL_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
                "CGN_CENTRAL_ADMIN_LISTEN": "127.0.0.1:0",
                "CGN_CENTRAL_REPLICA_ID": CENTRAL.name,
                **self.tls_env("CGN_CENTRAL_", CENTRAL),
            },
        )
        admin_address = (await self._wait_ready(central))["endpoints"]["admin"]
        admin = AdminClient(admin_address, self.operator_tls())
        node_endpoints: list[dict[str, str]] = []
        try:
            sandbox_json = self.state_dir / "sandbox.json"
            previous = json.loads(sandbox_json.read_text()) if sandbox_json.exists() else {}
            node_ids: list[str] = state.setdefault("node_ids", [])
            while len(node_ids) < self.nodes:
                node_id, _ = await admin.create_account(
                    AccountKind.NODE, f"sandbox node {len(node_ids) + 1}"
                )
                node_ids.append(node_id)
            if not previous.get("api_key") or previous.get("account_id") != state.get(
                "enterprise_id"
            ):
                enterprise_id, api_key = await admin.create_account(
                    AccountKind.ENTERPRISE,
                    "demo enterprise",
                    allowed_tiers=[Tier.TIER_1_PRIVATE, Tier.TIER_2_DATACENTER, Tier.TIER_3_TEE],
                )
                state["enterprise_id"] = enterprise_id
                state["miners"] = []  # tier-1 miners belong to the enterprise
            else:
                api_key = previous["api_key"]
            miners: list[str] = state.setdefault("miners", [])
            while len(miners) < self.miners:
                miner_id, miner_key = await admin.create_account(
                    AccountKind.MINER,
                    f"sandbox miner {len(miners) + 1}",
                    tier=self.miner_tier,
                    parent_account_id=state["enterprise_id"],
                )
                write_key_file(self._miner_key_file(len(miners) + 1), miner_key.encode())
                miners.append(miner_id)
            self._save_state(state)
            for index, node_id in enumerate(node_ids[: self.nodes], start=1):
                endpoints = await self._start_node(authority, index, node_id)
                await admin.register_node(node_id, endpoints)
                await _until(
                    functools.partial(admin.node_linked, node_id), "Central to link the node"
                )
                node_endpoints.append(endpoints)
        finally:
            await admin.close()

        miner_children = []
        for index, miner_id in enumerate(state["miners"][: self.miners], start=1):
            workdir = self.state_dir / f"miner-{index}"
            workdir.mkdir(exist_ok=True)
            name = f"miner-{index}"
            env = {
                # Miners are dealt to the nodes in turn.
                "CGN_MINER_NODE_ADDRESS": node_endpoints[(index - 1) % self.nodes]["miner_link"],
                "CGN_MINER_MINER_ID": miner_id,
                "CGN_MINER_MINER_KEY_FILE": str(self._miner_key_file(index)),
                "CGN_MINER_DSERVICES": self.dservices,
                "CGN_MINER_DESCRIPTORS": ",".join(str(p) for p in self.descriptor_paths),
                "CGN_MINER_STATE_DIR": str(workdir),
                **self.tls_env("CGN_MINER_", None),
                # The sandbox's scripts and images are served from 127.0.0.1.
                "CGN_DSERVICE_MEDIAGEN_ALLOW_LOOPBACK": "1",
            }
            self._restartable[name] = (["miner", "run"], env)
            miner_children.append(await self._spawn(name, ["miner", "run"], env))
        for child in miner_children:
            await self._wait_ready(child)
        gateway_urls = []
        for index, endpoints in enumerate(node_endpoints, start=1):
            gateway = await self._spawn(
                "gateway" if index == 1 else f"gateway-{index}",
                ["gateway"],
                {
                    # The DApp-facing side stays plain HTTP: it listens on loopback only. The
                    # gateway -> node link is mutual TLS like every link between our processes.
                    "CGN_GATEWAY_LISTEN": "127.0.0.1:0",
                    "CGN_GATEWAY_NODE_ADDRESS": endpoints["internal"],
                    "CGN_GATEWAY_CORS_ALLOWED_ORIGINS": ",".join(self.cors_origins),
                    **self.tls_env("CGN_GATEWAY_", GATEWAY),
                },
            )
            gateway_urls.append((await self._wait_ready(gateway))["endpoints"]["http"])
        for url in gateway_urls:
            await self._smoke_test(url, state["enterprise_id"], api_key)

        gateway_url = gateway_urls[0]
        info = {
            "gateway_url": gateway_url,
            "nodes": [
                {"name": self._node_name(index), "node_id": node_id, "gateway_url": url}
                for index, (node_id, url) in enumerate(
                    zip(state["node_ids"], gateway_urls, strict=False), start=1
                )
            ],
            "account_id": state["enterprise_id"],
            "api_key": api_key,
            "dservices": [
                {"name": n, "version": "0.1.0", "builtin": True}
                for n in self.dservices.split(",")
                if n
            ]
            + [
                {
                    "name": d.name,
                    "version": d.descriptor.version,
                    "builtin": False,
                    "descriptor": str(p),
                }
                for d, p in zip(self.descriptors, self.descriptor_paths, strict=True)
            ],
            "state_dir": str(self.state_dir),
            "pid": os.getpid(),
            "processes": {
                c.name: {"pid": c.process.pid, "endpoints": c.ready.get("endpoints", {})}
                for c in self.children
            },
        }
        write_json_atomic(self.state_dir / "sandbox.json", info, mode=0o600)
        self._info = info
        return info

    async def _start_node(self, authority: Authority, index: int, node_id: str) -> dict[str, str]:
        """Starts node ``index``; returns its endpoints. Its session key lives in a key file
        of its own directory, so its sessions survive a restart."""
        name = self._node_name(index)
        workdir = self.state_dir / name
        workdir.mkdir(exist_ok=True)
        identity = Identity(Role.NODE, node_id)
        await asyncio.to_thread(write_issued, authority, identity, self.certs_dir)
        env = {
            "CGN_NODE_NODE_ID": node_id,
            "CGN_NODE_SESSION_KEY_FILE": str(workdir / "session.key"),
            "CGN_NODE_LEDGER_URL": f"sqlite:///{workdir / 'ledger.db'}",
            "CGN_NODE_WORK_LISTEN": "127.0.0.1:0",
            "CGN_NODE_INTERNAL_LISTEN": "127.0.0.1:0",
            "CGN_NODE_MINER_LINK_LISTEN": "127.0.0.1:0",
            "CGN_NODE_STATUS_LISTEN": "127.0.0.1:0",
            "CGN_NODE_CENTRAL_LINK_LISTEN": "127.0.0.1:0",
            "CGN_NODE_DSERVICES": ",".join(self.dservice_names),
            **self.tls_env("CGN_NODE_", identity),
        }
        child = await self._spawn(name, ["node"], env)
        endpoints: dict[str, str] = (await self._wait_ready(child))["endpoints"]
        # A restarted node binds the same ports: Central, miners and the gateway find it again.
        for listener, address in endpoints.items():
            env[f"CGN_NODE_{listener.upper()}_LISTEN"] = address
        self._restartable[name] = (["node"], env)
        return endpoints

    async def keep_alive(self) -> None:
        """Restarts every node and miner that exits while the sandbox runs (a crashed or
        killed one comes back, as a supervised fleet's would; a node on the same ports);
        sandbox.json follows the new pids."""
        while not self.stopping:
            watched = {
                c: asyncio.ensure_future(c.process.wait())
                for c in self.children
                if c.name in self._restartable
            }
            try:
                await asyncio.wait(watched.values(), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in watched.values():
                    task.cancel()
            for child, task in watched.items():
                if not task.done() or task.cancelled() or self.stopping:
                    continue
                self.children.remove(child)
                log_event(
                    _log,
                    "sandbox_process_restarting",
                    logging.WARNING,
                    name=child.name,
                    exit_code=child.process.returncode,
                )
                args, env = self._restartable[child.name]
                fresh = await self._spawn(child.name, args, env)
                entry = self._info["processes"].setdefault(child.name, {})
                entry["pid"] = fresh.process.pid
                if args[0] == "node":
                    self.node_restarts += 1
                    self._info["node_restarts"] = self.node_restarts
                else:
                    self.miner_restarts += 1
                    self._info["miner_restarts"] = self.miner_restarts
                write_json_atomic(self.state_dir / "sandbox.json", self._info, mode=0o600)

    @staticmethod
    async def _smoke_test(gateway_url: str, account_id: str, api_key: str) -> None:
        """One real request through gateway, node, miner and echo."""
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{gateway_url}/v1/sessions", json={"account_id": account_id, "api_key": api_key}
            ) as response:
                if response.status != 200:
                    raise FailedPreconditionError(
                        f"sandbox: session failed: {response.status} {await response.text()}"
                    )
                token = (await response.json())["token"]
            async with http.post(
                f"{gateway_url}/v1/dservices/echo/ready?check=1",
                data=b"ping",
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                body = await response.read()
                if response.status != 200 or body != b"ping":
                    raise FailedPreconditionError(
                        f"sandbox: echo check failed: {response.status} {body[:200]!r}"
                    )

    async def stop(self) -> None:
        """Stops every process, newest first: SIGTERM, then SIGKILL after 10 s."""
        self.stopping = True
        for child in reversed(self.children):
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
        for child in reversed(self.children):
            try:
                await asyncio.wait_for(child.process.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
            log_event(
                _log, "sandbox_process_stopped", name=child.name, exit_code=child.process.returncode
            )


def curl_lines(info: dict[str, Any]) -> str:
    """Ready-to-paste shell lines: open a session, then call echo (the key is read from
    sandbox.json, never printed)."""
    sandbox_json = shlex.quote(str(Path(info["state_dir"]) / "sandbox.json"))
    url = info["gateway_url"]
    body_cmd = (
        "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "
        'print(json.dumps({"account_id": d["account_id"], "api_key": d["api_key"]}))'
        f"' {sandbox_json}"
    )
    token_cmd = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])'"
    return "\n".join(
        [
            f"TOKEN=$(curl -s -X POST {url}/v1/sessions -H 'Content-Type: application/json' "
            f'-d "$({body_cmd})" | {token_cmd})',
            f"curl -i -X POST '{url}/v1/dservices/echo/hello?name=cgn' "
            "-H \"Authorization: Bearer $TOKEN\" --data-binary 'hello, CGN'",
        ]
        + [
            f"curl -i '{url}/v1/dservices/{d['name']}/' -H \"X-CGN-Session: $TOKEN\""
            for d in info.get("dservices", [])
            if not d["builtin"]
        ]
    )


async def _main(
    state_dir: Path,
    miners: int,
    miner_tier: Tier,
    dservices: str,
    nodes: int,
    descriptors: Sequence[Path],
    cors_origins: Sequence[str],
) -> int:
    try:
        sandbox = Sandbox(
            state_dir, miners, miner_tier, dservices, nodes, descriptors, cors_origins
        )
    except CgnError as exc:
        print(f"sandbox failed: {exc.message}", file=sys.stderr, flush=True)
        return 1
    supervisor = Supervisor("sandbox")
    stop = asyncio.create_task(wait_for_stop())
    start = asyncio.create_task(sandbox.start())
    try:
        await asyncio.wait({stop, start}, return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            info = start.result()
            print(f"CGN sandbox ready: gateway {info['gateway_url']}", flush=True)
            print(f"State, logs and credentials: {state_dir} (sandbox.json)", flush=True)
            print("Try it:\n" + curl_lines(info), flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            supervisor.loop("keep-alive", sandbox.keep_alive)
            await stop
        return 0
    except CgnError as exc:
        print(f"sandbox failed: {exc.message}", file=sys.stderr, flush=True)
        return 1
    except grpc.aio.AioRpcError as exc:
        print(f"sandbox failed: {exc.code().name}: {exc.details()}", file=sys.stderr, flush=True)
        return 1
    finally:
        for task in (start, stop):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, CgnError):
                await task
        sandbox.stopping = True
        await supervisor.close()
        await sandbox.stop()
        if (state_dir / "sandbox.json").exists():
            _mark_stopped(state_dir / "sandbox.json")


def _mark_stopped(path: Path) -> None:
    data = json.loads(path.read_text())
    data["stopped"] = True
    write_json_atomic(path, data, mode=0o600)


def run_sandbox(
    state_dir: Path,
    miners: int,
    miner_tier: Tier = Tier.TIER_1_PRIVATE,
    dservices: str = "echo,mediagen",
    nodes: int = 1,
    descriptors: Sequence[Path] = (),
    cors_origins: Sequence[str] = (),
) -> int:
    """Blocking entry point for ``cgn sandbox``; returns the exit status."""
    return asyncio.run(
        _main(state_dir, miners, miner_tier, dservices, nodes, descriptors, cors_origins)
    )
