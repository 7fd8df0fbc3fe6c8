"""Starting and stopping the sandbox exactly as README does: ``scripts/sandbox``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from cgn_common.certs import Identity
from cgn_common.tls import TlsConfig

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass
class RunningSandbox:
    """A sandbox subprocess and what it wrote to sandbox.json."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    info: dict[str, Any]

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return str(self.info["gateway_url"])

    def tls(self, identity: Identity | None = None) -> TlsConfig:
        """TLS for talking to the sandbox: its CA, and ``identity``'s certificate from the
        sandbox's certs directory (None: a client without a certificate)."""
        certs = self.state_dir / "certs"
        if identity is None:
            return TlsConfig(ca_file=str(certs / "ca.pem"))
        stem = certs / f"{identity.role.value}-{identity.name}"
        return TlsConfig(f"{stem}.pem", f"{stem}.key", str(certs / "ca.pem"))

    async def session_token(self, account_id: str = "", api_key: str = "") -> str:
        """A session token from the gateway's ``POST /v1/sessions`` (the demo enterprise's
        when no account is given)."""
        credentials = {
            "account_id": account_id or self.info["account_id"],
            "api_key": api_key or self.info["api_key"],
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}/v1/sessions", json=credentials) as response,
        ):
            assert response.status == 200, await response.text()
            token: str = (await response.json())["token"]
            return token

    def current(self) -> dict[str, Any]:
        """sandbox.json as it is now (pids change when the sandbox restarts a miner)."""
        data: dict[str, Any] = json.loads((self.state_dir / "sandbox.json").read_text())
        return data

    def cgn_processes(self) -> dict[str, int]:
        """The CGN's own processes now, name -> pid: gateway, node, miners (not the DServices,
        not Central): those whose memory a large body must not grow."""
        return {
            name: int(process["pid"])
            for name, process in self.current()["processes"].items()
            if name in ("gateway", "node") or name.startswith("miner")
        }

    def pids(self) -> set[int]:
        """The sandbox, its children and every descendant (DService processes too)."""
        return {self.process.pid} | descendants(self.process.pid)


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (DService processes too)."""
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return status != "zombie"  # psutil.STATUS_ZOMBIE


def start_sandbox(
    state_dir: Path,
    log: Path,
    *,
    miners: int = 2,
    nodes: int = 1,
    miner_tier: int = 1,
    dservices: str = "echo,mediagen",
    env: dict[str, str] | None = None,
    descriptors: Sequence[Path] = (),
    cors_origins: Sequence[str] = (),
) -> RunningSandbox:
    """Runs ``scripts/sandbox --state-dir DIR`` and waits for sandbox.json (bounded).

    ``env`` adds variables to the sandbox's environment, which its children inherit (e.g.
    ``CGN_NODE_ACCOUNT_LIMIT``); each of ``descriptors`` is a ``--dservice`` file, each of
    ``cors_origins`` a ``--cors-origin``."""
    with open(log, "wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                str(ROOT / "scripts" / "sandbox"),
                "--state-dir",
                str(state_dir),
                "--miners",
                str(miners),
                "--nodes",
                str(nodes),
                "--miner-tier",
                str(miner_tier),
                "--dservices",
                dservices,
                *[arg for path in descriptors for arg in ("--dservice", str(path))],
                *[arg for origin in cors_origins for arg in ("--cors-origin", origin)],
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    sandbox_json = state_dir / "sandbox.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sandbox exited with {process.returncode}:\n{log.read_text()}")
        if sandbox_json.exists():
            info = json.loads(sandbox_json.read_text())
            if not info.get("stopped"):
                return RunningSandbox(process, state_dir, info)
        time.sleep(0.05)
    stop_sandbox(process)
    raise AssertionError(f"sandbox not ready in {START_TIMEOUT_S} s:\n{log.read_text()}")


def stop_sandbox(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then wait (bounded); SIGKILL the group as a last resort."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        return process.wait(STOP_TIMEOUT_S)


def reset_peak_rss(pid: int) -> None:
    """Sets the process's peak resident set (VmHWM) back to its current RSS (Linux:
    ``clear_refs`` 5), so a peak read afterwards is what came since, not an earlier test's."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")
