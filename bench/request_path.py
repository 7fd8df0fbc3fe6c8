"""Benchmark the CGN request path with wrk: the echo DService direct, a one-hop baseline, and
the full CGN path, side by side.

Usage (from the repository root)::

    .venv/bin/python bench/request_path.py
    .venv/bin/python bench/request_path.py --duration 3 --connections 1,64 --keep-state

One run starts its own children, all on 127.0.0.1, and measures four targets:

* ``direct``: the echo DService (``python -m dservices.echo``) on a free port;
* ``one hop``: the baseline built here (bench/_hop.py): an aiohttp front that makes one
  grpc.aio unary ``WorkService.Call`` per request to a gRPC server answering at once with the
  request body; two processes, mutual TLS between them with certificates of a throwaway
  operator CA (the gateway -> node link's setting and the same ``cgn_common`` credentials and
  channel options);
  both on the event loop the CGN's processes run on in the same run (``--loop``: uvloop, as
  the services run by default, or asyncio's own loop), so the comparison is like for like;
* ``2-hop floor``: the CGN's process layout and transports with none of its work (also
  bench/_hop.py): the same front, a ``relay`` in the node's place (WorkService.Call on mutual
  TLS, and the real MinerLinkService.Connect stream on server-authenticated TLS) and a
  ``responder`` in the miner's place that answers each WorkAssignment at once with a
  WorkResponse, both writing with the CGN's StreamWriter and batching as the node and miner
  do. No call authentication, broker, billing, metering or DService call: what the path's
  three processes and two hops cost by themselves, the floor under the CGN's figures on this
  machine and transport;
* ``through CGN``: a complete sandbox (``python -m cgn_cli sandbox --state-dir <tempdir>``):
  Central, a node with its SQLite ledger (billing on: every request is billed), 2 miners each
  running echo as a child process, and the REST gateway; mutual TLS between all of them. A
  request goes gateway -> node -> miner -> echo and back, with a session token from the
  gateway's ``POST /v1/sessions`` (the sandbox's demo account).

The load generator is wrk (Debian's package, installed with apt-get when missing): ``POST`` with
a query string and a ``--body-bytes`` body (default 64), keep-alive. Each cell (target x
connection count) is a 1 s wrk warm-up, then a ``--duration`` s wrk run (default 5). ``c=1`` is
``wrk -t1 -c1``; ``c=N`` for N > 1 is ``-t<--wrk-threads> -cN`` (default one thread: at these
rates one wrk thread uses a small part of a core, and a second would only compete with the
servers for the 2 cores). Reported per cell: good answers/s, wrk's p50/p99 latency (all
answers), errors (non-2xx answers plus connect/read/write/timeout errors from wrk's summary),
CPU per request of each server process (utime+stime from /proc/<pid>/stat around the measured
run, divided by the requests wrk completed) and wrk's own CPU (if it nears 100% of a core, the
client limited the run). The CPU sum counts the processes a request costs: echo (direct); front
and gRPC server (one hop); front, relay and responder (floor); gateway, node (its ledger writer
included) and miners (CGN). The CGN's echo children and Central are shown but not summed. One
aiohttp request per target before measuring checks that the body round-trips (and echo's
X-Echo-* headers).

The output is one table (metric rows; direct | one hop | 2-hop floor | through CGN | CGN/hop |
floor/hop columns) and one JSON line with every figure. Every child is ended by PID when the
run finishes, even on error or SIGTERM (SIGTERM, then SIGKILL after a timeout); afterwards
every process listed in sandbox.json, and every other descendant of the sandbox seen just
before the stop, is checked to be gone, and the sandbox's logs are scanned for warnings and
errors. ``--keep-state`` keeps the temporary directory (logs, sandbox.json, the hop's and the
floor's certificates).

Numbers move by 10-20% between runs on a shared 2-core machine; compare runs, not digits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from _logscan import scan_logs
from _procs import (
    HOST,
    POLL_S,
    Child,
    ProcIdentity,
    descendants,
    free_port,
    identify,
    leftovers,
    proc_cmdline,
    proc_context_switches,
    proc_cpu_seconds,
    read_json,
    run_bench,
    spawn,
    stop_child,
    wait_listening,
)
from _wrk import WrkResult, ensure_wrk, run_wrk, write_script

from cgn_common.certs import Authority, Identity, Role, write_issued
from cgn_common.loop import LOOP_ENV

BENCH_DIR = Path(__file__).resolve().parent
ECHO_PATH = "/bench/echo"
QUERY = "run=bench&n=1"
DIRECT, HOP, FLOOR, CGN = "direct", "one hop", "2-hop floor", "through CGN"
TARGETS = (DIRECT, HOP, FLOOR, CGN)
SANDBOX_START_TIMEOUT_S = 120.0
CHILD_STOP_TIMEOUT_S = 5.0
SANDBOX_STOP_TIMEOUT_S = 40.0  # the sandbox itself waits up to 10 s per child
WARMUP_S = 1
FRONT, RPC_SERVER = "HTTP front", "gRPC server"
#: The processes whose CPU a request costs, per target; a name also covers "<name>-<n>"
#: ("miner" covers miner-1 and miner-2).
SUMMED = {
    DIRECT: ("echo",),
    HOP: ("front", "grpc"),
    FLOOR: ("front", "relay", "responder"),
    CGN: ("gateway", "node", "miner"),
}


# --------------------------------------------------------------------------------------------
# Children: echo, the hop, the sandbox
# --------------------------------------------------------------------------------------------


async def start_echo(workdir: Path) -> tuple[Child, int]:
    port = free_port()
    echo = await spawn(
        "echo", ["-m", "dservices.echo"], {"CGN_LISTEN": f"{HOST}:{port}"}, workdir / "echo.log"
    )
    return echo, port


def hop_certificates(directory: Path) -> tuple[list[str], list[str]]:
    """A throwaway operator CA and two certificates: the hop's server and front (client)."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority.create("bench hop CA")
    authority.save(directory / "ca.pem", directory / "ca.key")
    tls = []
    for identity in (Identity(Role.NODE, "hop-node"), Identity(Role.GATEWAY, "hop-gateway")):
        files = write_issued(authority, identity, directory)
        ca = str(directory / "ca.pem")
        tls.append(["--cert", str(files.cert_file), "--key", str(files.key_file), "--ca", ca])
    return tls[0], tls[1]


async def start_hop(workdir: Path, event_loop: str) -> tuple[Child, Child, int, int]:
    """The hop's gRPC server and front, both on ``event_loop``; returns both and their
    ports."""
    on_loop = ["--uvloop"] if event_loop == "uvloop" else []
    server_tls, front_tls = await asyncio.to_thread(hop_certificates, workdir / "hop-certs")
    script = str(BENCH_DIR / "_hop.py")
    grpc_port, front_port = free_port(), free_port()
    grpc_server = await spawn(
        "hop grpc",
        [script, "grpc", "--listen", f"{HOST}:{grpc_port}", *server_tls, *on_loop],
        {},
        workdir / "hop-grpc.log",
    )
    front = await spawn(
        "hop front",
        [
            *(script, "front", "--listen", f"{HOST}:{front_port}"),
            *("--upstream", f"{HOST}:{grpc_port}", *front_tls, *on_loop),
        ],
        {},
        workdir / "hop-front.log",
    )
    return grpc_server, front, grpc_port, front_port


async def start_floor(workdir: Path, event_loop: str) -> tuple[Child, Child, Child, int, int]:
    """The floor's relay, responder and front, all on ``event_loop``; returns them, the relay's
    work port and the front's port."""
    on_loop = ["--uvloop"] if event_loop == "uvloop" else []
    relay_tls, front_tls = await asyncio.to_thread(hop_certificates, workdir / "floor-certs")
    ca = relay_tls[relay_tls.index("--ca") + 1]
    script = str(BENCH_DIR / "_hop.py")
    work_port, stream_port, front_port = free_port(), free_port(), free_port()
    relay = await spawn(
        "floor relay",
        [
            *(script, "relay", "--listen", f"{HOST}:{work_port}"),
            *("--stream-listen", f"{HOST}:{stream_port}", *relay_tls, *on_loop),
        ],
        {},
        workdir / "floor-relay.log",
    )
    await wait_listening(relay, stream_port)
    responder = await spawn(
        "floor responder",
        [script, "responder", "--upstream", f"{HOST}:{stream_port}", "--ca", ca, *on_loop],
        {},
        workdir / "floor-responder.log",
    )
    front = await spawn(
        "floor front",
        [
            *(script, "front", "--listen", f"{HOST}:{front_port}"),
            *("--upstream", f"{HOST}:{work_port}", *front_tls, *on_loop),
        ],
        {},
        workdir / "floor-front.log",
    )
    return relay, responder, front, work_port, front_port


async def wait_sandbox_json(child: Child, path: Path) -> dict[str, Any]:
    """Poll for sandbox.json (written once the sandbox serves) with a deadline."""
    deadline = time.monotonic() + SANDBOX_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.proc.returncode is not None:
            raise RuntimeError(f"the sandbox exited early; its output:\n{child.output_tail()}")
        info = read_json(path)
        if info is not None:
            return info
        await asyncio.sleep(POLL_S)
    raise RuntimeError(
        f"no {path} after {SANDBOX_START_TIMEOUT_S} s; the sandbox's output:\n{child.output_tail()}"
    )


def short_name(pid: int) -> str:
    """A name for a sandbox process sandbox.json does not list: the DService module a miner
    runs ("echo", "mediagen"), "multiprocessing" for a helper one of them forked, else its
    shortened command line."""
    words = proc_cmdline(pid).split()
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1].removeprefix("dservices.")
    if any("multiprocessing" in w for w in words):
        return "multiprocessing"
    return " ".join(words)


def sandbox_process_names(sandbox: Child, info: dict[str, Any]) -> dict[int, str]:
    """PID -> name of the sandbox and all its descendants (names from sandbox.json)."""
    listed = {int(proc["pid"]): name for name, proc in info.get("processes", {}).items()}
    names = {sandbox.pid: "sandbox"}
    for pid in descendants(sandbox.pid):
        names[pid] = listed.get(pid) or short_name(pid)
    return names


def sandbox_processes(sandbox: Child, info: dict[str, Any]) -> list[ProcIdentity]:
    """The processes listed in sandbox.json plus every live descendant of the sandbox."""
    names: dict[int, str] = {
        int(proc["pid"]): name for name, proc in info.get("processes", {}).items()
    }
    pids = list(names)
    for pid in descendants(sandbox.pid):
        if pid not in names:
            names[pid] = short_name(pid)
            pids.append(pid)
    found = (identify(pid, names[pid]) for pid in pids)
    return [p for p in found if p is not None]


async def open_session(gateway_url: str, account_id: str, api_key: str) -> str:
    """POST /v1/sessions; returns the bearer token."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway_url}/v1/sessions", json={"account_id": account_id, "api_key": api_key}
        ) as response,
    ):
        if response.status != 200:
            raise RuntimeError(f"session failed: {response.status} {await response.text()}")
        token: str = (await response.json())["token"]
        return token


# --------------------------------------------------------------------------------------------
# Targets and cells
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One way to reach an echo: its URL, wrk script, headers, and whose CPU to count."""

    label: str
    url: str
    headers: dict[str, str]
    script: Path
    server_procs: Callable[[], dict[int, str]]
    echo_headers: bool  # the answer carries echo's X-Echo-* headers


@dataclass
class Cell:
    """One (target, connections) cell: wrk's figures and the servers' CPU seconds by name."""

    wrk: WrkResult
    loadavg_1m: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    switches: dict[str, int] = field(default_factory=dict)
    warmup_errors: int = 0

    def cpu_us(self, names: Sequence[str]) -> float:
        """CPU microseconds per completed request of the processes named (or prefixed) so."""
        used = sum(
            cpu
            for name, cpu in self.cpu_s.items()
            if any(name == n or name.startswith(f"{n}-") for n in names)
        )
        return 1e6 * used / self.wrk.requests if self.wrk.requests else math.nan

    def switches_per_request(self, names: Sequence[str]) -> float:
        """Context switches per completed request of the processes named (or prefixed) so."""
        used = sum(
            n
            for name, n in self.switches.items()
            if any(name == m or name.startswith(f"{m}-") for m in names)
        )
        return used / self.wrk.requests if self.wrk.requests else math.nan


def role(target: str, name: str) -> str:
    """A process name reduced to what the CPU rows compare ("hop front" -> "front")."""
    return name.removeprefix("hop ").removeprefix("floor ") if target in (HOP, FLOOR) else name


async def measure_cell(
    wrk: str, target: Target, connections: int, args: argparse.Namespace
) -> Cell:
    """A warm-up run, then the measured run with the servers' CPU read around it."""
    warm = await run_wrk(wrk, target.url, target.script, connections, args.wrk_threads, WARMUP_S)
    loadavg_1m = os.getloadavg()[0]
    procs = target.server_procs()
    before = {pid: proc_cpu_seconds(pid) for pid in procs}
    switched = {pid: proc_context_switches(pid) for pid in procs}
    result = await run_wrk(
        wrk, target.url, target.script, connections, args.wrk_threads, args.duration
    )
    cell = Cell(result, loadavg_1m, warmup_errors=warm.errors)
    for pid, name in procs.items():
        key = role(target.label, name)
        cell.cpu_s[key] = cell.cpu_s.get(key, 0.0) + proc_cpu_seconds(pid) - before[pid]
        cell.switches[key] = cell.switches.get(key, 0) + proc_context_switches(pid) - switched[pid]
    return cell


async def sanity_check(target: Target, body: bytes) -> str:
    """One aiohttp request: status, body and (for echo) the X-Echo-* headers."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(target.url, data=body, headers=target.headers) as response,
    ):
        answer = await response.read()
        problems = []
        if response.status != 200:
            problems.append(f"HTTP {response.status}: {answer[:120]!r}")
        elif answer != body:
            problems.append(f"body mismatch: {len(answer)} bytes, starts {answer[:24]!r}")
        if target.echo_headers:
            expected = {"X-Echo-Method": "POST", "X-Echo-Path": ECHO_PATH, "X-Echo-Query": QUERY}
            wrong = {k: response.headers.get(k) for k, v in expected.items()}
            wrong = {k: v for k, v in wrong.items() if v != expected[k]}
            if wrong:
                problems.append(f"unexpected headers {wrong}")
    return "; ".join(problems) or "ok"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything the run prints."""

    args: argparse.Namespace
    results: dict[tuple[str, int], Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    gateway_url: str = "-"
    loadavg_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)


def fmt(value: float, spec: str) -> str:
    return "-" if value != value else spec.format(value)


def over_hop(hop: float, other: float) -> str:
    if not hop or hop != hop or other != other:
        return "-"
    return f"{other / hop:.2f}"


def cpu_rows(cells: dict[str, Cell]) -> list[tuple[str, dict[str, float], bool]]:
    """(label, value per target, whether a ratio makes sense) for the CPU rows."""
    nan = math.nan
    miners = sorted(
        {n for n in cells[CGN].cpu_s if n.startswith("miner")} if CGN in cells else set()
    )

    def per(target: str, names: Sequence[str]) -> float:
        return cells[target].cpu_us(names) if target in cells and names else nan

    rows: list[tuple[str, dict[str, float], bool]] = [
        (
            f"CPU us/req {FRONT} (front | front | gateway)",
            {HOP: per(HOP, ["front"]), FLOOR: per(FLOOR, ["front"]), CGN: per(CGN, ["gateway"])},
            True,
        ),
        (
            f"CPU us/req {RPC_SERVER} (grpc | relay | node)",
            {HOP: per(HOP, ["grpc"]), FLOOR: per(FLOOR, ["relay"]), CGN: per(CGN, ["node"])},
            True,
        ),
        ("CPU us/req floor responder", {FLOOR: per(FLOOR, ["responder"])}, False),
    ]
    for miner in miners:
        rows.append((f"CPU us/req {miner}", {CGN: per(CGN, [miner])}, False))
    rows.append(("CPU us/req SUM (counted procs)", {t: per(t, SUMMED[t]) for t in TARGETS}, True))
    rows.append(
        (
            "CPU us/req echo (CGN: not summed)",
            {DIRECT: per(DIRECT, ["echo"]), CGN: per(CGN, ["echo"])},
            False,
        )
    )
    rows.append(("CPU us/req central (not summed)", {CGN: per(CGN, ["central"])}, False))

    def switches(target: str, names: Sequence[str]) -> float:
        return cells[target].switches_per_request(names) if target in cells else nan

    rows.append(
        (
            "switches/req SUM (context switches, counted procs)",
            {t: switches(t, SUMMED[t]) for t in TARGETS},
            True,
        )
    )
    return rows


def metric_rows(report: Report, connections: int) -> list[list[str]]:
    """Rows for one connection count: metric, direct, one hop, floor, through CGN, CGN/hop,
    floor/hop."""
    cells = {t: c for t in TARGETS if (c := report.results.get((t, connections))) is not None}
    if not cells:
        return [[f"c={connections}: not measured", *("-" for _ in HEADER[1:])]]
    nan = math.nan

    def each(get: Callable[[Cell], float]) -> dict[str, float]:
        return {t: get(c) for t, c in cells.items()}

    rows: list[tuple[str, dict[str, float], bool, str]] = [
        ("req/s", each(lambda c: c.wrk.rps), True, "{:,.0f}"),
        ("p50 ms", each(lambda c: c.wrk.p50_ms), True, "{:.2f}"),
        ("p99 ms", each(lambda c: c.wrk.p99_ms), True, "{:.2f}"),
        ("errors", each(lambda c: c.wrk.errors), False, "{:,.0f}"),
        *(
            (label, values, r, "{:.1f}" if label.startswith("switches") else "{:,.0f}")
            for label, values, r in cpu_rows(cells)
        ),
        (
            "wrk CPU % of a core",
            each(lambda c: 100 * c.wrk.cpu_s / c.wrk.duration_s),
            False,
            "{:.0f}",
        ),
        ("load average 1 min (cell start)", each(lambda c: c.loadavg_1m), False, "{:.1f}"),
    ]
    table = []
    for label, values, with_ratio, spec in rows:
        got = {t: values.get(t, nan) for t in TARGETS}
        ratios = [over_hop(got[HOP], got[t]) if with_ratio else "-" for t in (CGN, FLOOR)]
        table.append([f"c={connections}: {label}", *(fmt(got[t], spec) for t in TARGETS), *ratios])
    return table


HEADER = ["metric", *TARGETS, "CGN/hop", "floor/hop"]


def render_table(report: Report) -> str:
    header = HEADER
    body = [row for c in report.args.connections for row in metric_rows(report, c)]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cols: list[str]) -> str:
        first = cols[0].ljust(widths[0])
        return "  ".join([first, *(v.rjust(w) for v, w in zip(cols[1:], widths[1:], strict=True))])

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(cols) for cols in body), rule])


def json_line(report: Report) -> str:
    cells: dict[str, dict[str, Any]] = {}
    for (target, connections), cell in report.results.items():
        w = cell.wrk
        cells.setdefault(target, {})[str(connections)] = {
            "requests": w.requests,
            "duration_s": round(w.duration_s, 3),
            "req_per_s": round(w.rps, 1),
            "p50_ms": w.p50_ms,
            "p90_ms": w.p90_ms,
            "p99_ms": w.p99_ms,
            "max_ms": w.max_ms,
            "errors": w.errors,
            "error_kinds": w.error_kinds(),
            "warmup_errors": cell.warmup_errors,
            "cpu_us_per_req": {n: round(cell.cpu_us([n]), 1) for n in sorted(cell.cpu_s)},
            "cpu_us_per_req_sum": round(cell.cpu_us(SUMMED[target]), 1),
            "context_switches_per_req": {
                n: round(cell.switches_per_request([n]), 2) for n in sorted(cell.switches)
            },
            "wrk_cpu_pct": round(100 * w.cpu_s / w.duration_s, 1),
            "loadavg_1m_at_start": round(cell.loadavg_1m, 2),
        }
    a = report.args
    params = {
        "duration_s": a.duration,
        "body_bytes": a.body_bytes,
        "connections": a.connections,
        "wrk_threads": a.wrk_threads,
        "event_loop": a.loop,
        "loadavg_at_start": report.loadavg_at_start,
        "loadavg_at_end": os.getloadavg(),
    }
    return json.dumps({"bench": "request_path", "params": params, "cells": cells})


def loadavg(values: Sequence[float]) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def print_report(report: Report, wrk_version: str) -> None:
    a = report.args
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, aiohttp {aiohttp.__version__}, "
        f"grpcio {version('grpcio')}, {wrk_version}"
    )
    print(
        f"request: POST {ECHO_PATH}?{QUERY} with a {a.body_bytes} B body; {WARMUP_S} s wrk "
        f"warm-up + {a.duration} s measured per cell; c=1: wrk -t1 -c1, c>1: wrk "
        f"-t{a.wrk_threads} -c<n>"
    )
    print(
        f"event loop of the hop, the floor and every CGN process: {a.loop}; one hop: aiohttp "
        "front -> grpc.aio WorkService.Call, mutual TLS; 2-hop floor: the same front -> relay "
        "-> MinerLinkService.Connect stream -> responder, no work; CGN gateway: "
        f"{report.gateway_url}, billing on (SQLite ledger)"
    )
    print(
        f"load average (1, 5, 15 min): at the start {loadavg(report.loadavg_at_start)}, "
        f"at the end {loadavg(os.getloadavg())}"
    )
    print()
    print(render_table(report))
    print(
        "CGN/hop: through CGN divided by one hop (req/s below 1, latency and CPU above 1 mean the "
        "CGN path is slower or costs more); floor/hop: the 2-hop floor (the CGN's three "
        "processes and two hops, no work) divided by one hop. Latencies: wrk's, all answers.\n"
        "SUM: echo (direct); front + gRPC server (one hop); front + relay + responder (floor); "
        "gateway + node + miners (CGN). CPU "
        "per request = CPU seconds in the measured run / requests wrk completed. switches/req: "
        "voluntary + involuntary context switches of every thread (/proc/<pid>/task/*/status) "
        "in the measured run / requests completed."
    )
    for note in report.notes:
        print(note)
    print(json_line(report))


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def make_body(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


@dataclass
class Children:
    """The bench's children (None until started) and what the sandbox said about itself."""

    echo: Child | None = None
    hop_grpc: Child | None = None
    hop_front: Child | None = None
    floor_relay: Child | None = None
    floor_responder: Child | None = None
    floor_front: Child | None = None
    sandbox: Child | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _started(child: Child | None) -> Child:
    if child is None:
        raise RuntimeError("a child is missing")
    return child


async def build_targets(
    kids: Children, ports: dict[str, int], workdir: Path, body: bytes
) -> list[Target]:
    """The four targets (opens a session at the gateway)."""
    echo, grpc_server, front, sandbox = map(
        _started, (kids.echo, kids.hop_grpc, kids.hop_front, kids.sandbox)
    )
    relay, responder, floor_front = map(
        _started, (kids.floor_relay, kids.floor_responder, kids.floor_front)
    )
    info = kids.info
    gateway = urlsplit(info["gateway_url"])
    if gateway.hostname != HOST or gateway.port is None:
        raise RuntimeError(f"unexpected gateway_url {info['gateway_url']!r}")
    token = await open_session(info["gateway_url"], info["account_id"], info["api_key"])
    plain = {"Content-Type": "application/octet-stream"}
    authorized = {**plain, "Authorization": f"Bearer {token}"}
    path = f"{ECHO_PATH}?{QUERY}"
    specs: list[tuple[str, str, dict[str, str], Callable[[], dict[int, str]], bool]] = [
        (DIRECT, f"http://{HOST}:{ports['echo']}{path}", plain, lambda: {echo.pid: "echo"}, True),
        (
            HOP,
            f"http://{HOST}:{ports['front']}{path}",
            plain,
            lambda: {front.pid: front.name, grpc_server.pid: grpc_server.name},
            False,
        ),
        (
            FLOOR,
            f"http://{HOST}:{ports['floor']}{path}",
            plain,
            lambda: {p.pid: p.name for p in (floor_front, relay, responder)},
            False,
        ),
        (
            CGN,
            f"http://{HOST}:{gateway.port}/v1/dservices/echo{path}",
            authorized,
            lambda: sandbox_process_names(sandbox, info),
            True,
        ),
    ]
    return [
        Target(
            label,
            url,
            headers,
            write_script(workdir / f"wrk-{i}.lua", body, headers),
            procs,
            echo_headers,
        )
        for i, (label, url, headers, procs, echo_headers) in enumerate(specs)
    ]


async def measure(wrk: str, targets: Sequence[Target], report: Report, body: bytes) -> None:
    """Sanity-check each target, then run every cell, interleaving targets per connection
    count."""
    for target in targets:
        report.notes.append(f"sanity ({target.label}): {await sanity_check(target, body)}")
    for connections in report.args.connections:
        for target in targets:
            print(f"measuring {target.label}, c={connections} ...", file=sys.stderr, flush=True)
            cell = await measure_cell(wrk, target, connections, report.args)
            report.results[(target.label, connections)] = cell
            if cell.wrk.errors:
                report.notes.append(
                    f"errors ({target.label}, c={connections}): {cell.wrk.error_kinds()}"
                )
            if cell.warmup_errors:
                report.notes.append(
                    f"warm-up errors ({target.label}, c={connections}): {cell.warmup_errors}"
                )


async def shutdown(kids: Children, report: Report) -> None:
    """Stop every child by PID and check that nothing of the sandbox is left running."""
    for child in (
        kids.floor_front,
        kids.floor_responder,
        kids.floor_relay,
        kids.hop_front,
        kids.hop_grpc,
        kids.echo,
    ):
        if child is not None:
            outcome = await stop_child(child, CHILD_STOP_TIMEOUT_S)
            report.notes.append(f"{child.name} (pid {child.pid}): {outcome}")
    if kids.sandbox is None:
        return
    watched = sandbox_processes(kids.sandbox, kids.info)
    outcome = await stop_child(kids.sandbox, SANDBOX_STOP_TIMEOUT_S)
    report.notes.append(f"sandbox (pid {kids.sandbox.pid}): {outcome}")
    left = await leftovers(watched)
    listed = ", ".join(f"{p.name}={p.pid}" for p in watched)
    if left:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in left)
        report.notes.append(f"LEFT RUNNING after the sandbox stopped (now SIGKILLed): {names}")
    else:
        report.notes.append(f"no sandbox process left running (checked {listed})")


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout
    return (out.splitlines() or ["wrk ?"])[0].split(" Copyright")[0].strip()


async def run(args: argparse.Namespace) -> int:
    """Start the children, measure, always stop them, print the report."""
    workdir = Path(tempfile.mkdtemp(prefix="cgn-bench-"))
    state_dir = workdir / "state"
    report = Report(args)
    kids = Children()
    status = 0
    wrk = "wrk"
    try:
        wrk = await asyncio.to_thread(ensure_wrk)
        kids.echo, echo_port = await start_echo(workdir)
        kids.hop_grpc, kids.hop_front, grpc_port, front_port = await start_hop(workdir, args.loop)
        floor = await start_floor(workdir, args.loop)
        kids.floor_relay, kids.floor_responder, kids.floor_front, relay_port, floor_port = floor
        kids.sandbox = await spawn(
            "sandbox",
            ["-m", "cgn_cli", "sandbox", "--state-dir", str(state_dir)],
            {LOOP_ENV: args.loop},
            workdir / "sandbox.log",
        )
        print("starting echo, the hop and the sandbox ...", file=sys.stderr, flush=True)
        await wait_listening(kids.echo, echo_port)
        await wait_listening(kids.hop_grpc, grpc_port)
        await wait_listening(kids.hop_front, front_port)
        await wait_listening(kids.floor_relay, relay_port)
        await wait_listening(kids.floor_front, floor_port)
        kids.info = await wait_sandbox_json(kids.sandbox, state_dir / "sandbox.json")
        report.gateway_url = kids.info["gateway_url"]
        body = make_body(args.body_bytes)
        ports = {"echo": echo_port, "front": front_port, "floor": floor_port}
        targets = await build_targets(kids, ports, workdir, body)
        await measure(wrk, targets, report, body)
    except (RuntimeError, OSError, aiohttp.ClientError, subprocess.CalledProcessError) as exc:
        report.notes.append(f"FAILED: {type(exc).__name__}: {exc}")
        status = 1
    finally:
        await shutdown(kids, report)
        found = scan_logs(sorted((state_dir / "logs").glob("*.log")), workdir / "sandbox.log")
        report.notes.append(f"sandbox logs: {len(found) - 1} distinct warning/error/odd line(s)")
        report.notes.extend(found)
        for name in (
            "hop-grpc.log",
            "hop-front.log",
            "floor-relay.log",
            "floor-responder.log",
            "floor-front.log",
            "echo.log",
        ):
            text = (workdir / name).read_text(errors="replace") if (workdir / name).exists() else ""
            if text.strip():
                report.notes.append(f"{name}: {text.strip().splitlines()[-1][:160]}")
        if args.keep_state:
            report.notes.append(f"state kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print_report(report, wrk_version(wrk) if shutil.which(wrk) else "wrk missing")
    return status


def parse_connections(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of connection counts >= 1")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=int, default=5, help="measured seconds per cell (wrk takes whole s)"
    )
    parser.add_argument("--body-bytes", type=int, default=64, help="request body size")
    parser.add_argument(
        "--connections",
        type=parse_connections,
        default=[1, 64],
        help="comma-separated keep-alive connection counts (default 1,64)",
    )
    parser.add_argument(
        "--wrk-threads", type=int, default=1, help="wrk threads when connections > 1 (default 1)"
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default=os.environ.get(LOOP_ENV, "uvloop"),
        help="the event loop of the hop's two processes and of the sandbox's (CGN_EVENT_LOOP; "
        "default uvloop, as the CGN's services run)",
    )
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the temporary state directory and logs"
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.body_bytes < 0 or args.wrk_threads < 1:
        parser.error("--duration and --wrk-threads must be >= 1 and --body-bytes >= 0")
    return args


def main() -> None:
    args = parse_args()
    run_bench(run, args)


if __name__ == "__main__":
    main()
