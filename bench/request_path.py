"""Benchmark the CGN request path: the echo DService called directly vs through a sandbox.

Usage (from the repository root)::

    .venv/bin/python bench/request_path.py
    .venv/bin/python bench/request_path.py --duration 2 --body-bytes 1024 --keep-state

One run starts two children of its own, both on 127.0.0.1:

* ``direct``: the echo DService (``python -m dservices.echo``) on a free port, the baseline;
* ``through CGN``: a complete sandbox (``python -m cgn_cli sandbox --state-dir <tempdir>``):
  Central, a node, 2 miners each running echo as a child process, and the REST gateway. A
  request goes gateway -> node -> miner -> echo and back.

For each path, at 1 and 64 concurrent keep-alive connections, it sends ``POST`` requests with a
query string and a ``--body-bytes`` body (default 64) for ``--duration`` seconds (default 5),
after a short warm-up on the same connections, and reports requests/s, p50/p99/max latency,
errors (any status other than 200, or a body that did not round-trip byte for byte), the server
side's CPU per request (the echo process; or every process of the sandbox) and the load
generator's own CPU use. Latency percentiles cover successful requests only.

The load generator is a minimal raw HTTP/1.1 client on uvloop (keep-alive, Content-Length or
chunked responses), because the aiohttp client costs more CPU per request than the echo server
under test and would be measured instead of it on a 2-core machine. If its CPU use reaches
~100% the client, not the server, limits the numbers.

Both children are ended by PID when the run finishes, even on error or SIGTERM (SIGTERM, then
SIGKILL after a timeout). Afterwards every process listed in sandbox.json, and every other
descendant of the sandbox seen just before the stop (the miners' echo children), is checked to
be gone, and the sandbox's logs are scanned for warnings and errors. ``--keep-state`` keeps the
temporary state directory (logs, sandbox.json) for inspection.

Numbers move by 10-20% between runs on a shared 2-core machine; compare runs, not digits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvloop
from _common import cpu_seconds, read_chunked

from cgn_common.process import die_with_parent

HOST = "127.0.0.1"
CONCURRENCY = (1, 64)
ECHO_PATH = "/bench/echo"
QUERY = "run=bench&n=1"
TARGETS = ("direct", "through CGN")
ECHO_START_TIMEOUT_S = 20.0
SANDBOX_START_TIMEOUT_S = 120.0
ECHO_STOP_TIMEOUT_S = 5.0
SANDBOX_STOP_TIMEOUT_S = 40.0  # the sandbox itself waits up to 10 s per child
LEFTOVER_WAIT_S = 5.0
CELL_GRACE_S = 30.0  # a request still unanswered this long after the window counts as an error
MAX_WARMUP_S = 1.0
POLL_S = 0.1
LOG_LEVELS = ("warning", "error", "critical")
GLOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (.*)$")
CLIENT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


# --------------------------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------------------------


def proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` (0 once it is gone)."""
    fields = proc_stat_fields(pid)
    return 0.0 if fields is None else cpu_seconds(fields)


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused PID apart)."""
    fields = proc_stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def proc_cmdline(pid: int) -> str:
    """The command line of `pid`, shortened, for messages."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:80]


def descendants(root: int) -> list[int]:
    """Every live descendant of `root` (children, grandchildren, ...), from a /proc scan."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@dataclass(frozen=True)
class ProcIdentity:
    """A process identified by PID and start time, with a name for messages."""

    pid: int
    start_ticks: int
    name: str

    def alive(self) -> bool:
        return proc_start_ticks(self.pid) == self.start_ticks


def identify(pid: int, name: str) -> ProcIdentity | None:
    start = proc_start_ticks(pid)
    return None if start is None else ProcIdentity(pid, start, name)


# --------------------------------------------------------------------------------------------
# Children: the echo baseline and the sandbox
# --------------------------------------------------------------------------------------------


@dataclass
class Child:
    """A child process of this benchmark and the file that holds its output."""

    name: str
    proc: asyncio.subprocess.Process
    output: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def spawn(name: str, args: Sequence[str], env: dict[str, str], output: Path) -> Child:
    """Start `sys.executable args...` with stdout and stderr going to `output`.

    The child gets SIGTERM from the kernel if this process dies without stopping it.
    """
    with output.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=die_with_parent,
        )
    return Child(name, proc, output)


def check_running(child: Child) -> None:
    if child.proc.returncode is not None:
        raise RuntimeError(
            f"{child.name} exited with {child.proc.returncode} before it served; its output:\n"
            f"{child.output_tail()}"
        )


async def wait_listening(child: Child, port: int) -> None:
    """Poll until `port` accepts connections, failing if the child exits or time runs out."""
    deadline = time.monotonic() + ECHO_START_TIMEOUT_S
    while time.monotonic() < deadline:
        check_running(child)
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(
        f"{child.name} did not listen on port {port} within {ECHO_START_TIMEOUT_S} s"
    )


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None while it does not exist (or is not complete)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


async def wait_sandbox_json(child: Child, path: Path) -> dict[str, Any]:
    """Poll for sandbox.json (written once the sandbox serves) with a deadline."""
    deadline = time.monotonic() + SANDBOX_START_TIMEOUT_S
    while time.monotonic() < deadline:
        check_running(child)
        info = read_json(path)
        if info is not None:
            return info
        await asyncio.sleep(POLL_S)
    raise RuntimeError(
        f"no {path} after {SANDBOX_START_TIMEOUT_S} s; the sandbox's output:\n{child.output_tail()}"
    )


async def stop_child(child: Child, timeout_s: float) -> str:
    """SIGTERM `child` by PID, then SIGKILL if it has not exited after `timeout_s`."""
    if child.proc.returncode is not None:
        return f"had already exited ({child.proc.returncode})"
    with contextlib.suppress(ProcessLookupError):
        child.proc.terminate()
    try:
        code = await asyncio.wait_for(child.proc.wait(), timeout_s)
        return f"exited {code} after SIGTERM"
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.proc.kill()
        await child.proc.wait()
        return f"did not exit within {timeout_s:.0f} s of SIGTERM: SIGKILLed"


def short_name(pid: int) -> str:
    """'echo' for an echo DService process, else its shortened command line."""
    cmdline = proc_cmdline(pid)
    return "echo" if "dservices.echo" in cmdline else cmdline


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


async def leftovers(processes: Sequence[ProcIdentity]) -> list[ProcIdentity]:
    """Which of `processes` are still running after a grace period; those are SIGKILLed."""
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    alive = [p for p in processes if p.alive()]
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        alive = [p for p in alive if p.alive()]
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    return alive


# --------------------------------------------------------------------------------------------
# Raw HTTP/1.1 load generator
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One way to reach echo: where to connect, the encoded request, whose CPU to count."""

    label: str
    port: int
    request: bytes
    body: bytes
    server_procs: Callable[[], dict[int, str]]


def encode_request(path: str, port: int, body: bytes, extra_headers: str = "") -> bytes:
    """A keep-alive POST with a Content-Length body."""
    head = (
        f"POST {path}?{QUERY} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/octet-stream\r\n{extra_headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a raw response head (without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"bad status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one response (status, headers, body) from a keep-alive stream."""
    status, headers = parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return status, headers, await read_chunked(reader)
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


def check_response(status: int, body: bytes, expected: bytes) -> str:
    """'' for a good echo, else a short description of what was wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:120]!r}"
    if body != expected:
        return f"body mismatch: {len(body)} bytes, starts {body[:24]!r}"
    return ""


@dataclass
class CellResult:
    """What one (target, concurrency) cell measured inside its window."""

    ok: int = 0
    errors: int = 0
    warmup_errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    server_cpu_by_name: dict[str, float] = field(default_factory=dict)
    client_cpu_s: float = 0.0

    @property
    def server_cpu_s(self) -> float:
        return sum(self.server_cpu_by_name.values())

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    def record(self, measured: bool, latency: float, error: str) -> None:
        if error:
            self.error_kinds[error[:100]] += 1
            if measured:
                self.errors += 1
            else:
                self.warmup_errors += 1
        elif measured:
            self.ok += 1
            self.latencies.append(latency)


@dataclass(frozen=True)
class Window:
    """The measured interval (perf_counter seconds); requests started before it warm up."""

    start: float
    end: float


class Connection:
    """One keep-alive connection that reopens itself after an error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, request: bytes, expected: bytes) -> str:
        """Send one request; '' on a good echo, else what went wrong."""
        try:
            if self.streams is None:
                self.streams = await asyncio.open_connection(HOST, self.port)
            reader, writer = self.streams
            writer.write(request)
            status, headers, body = await read_response(reader)
        except CLIENT_ERRORS as exc:
            self.close()
            return f"{type(exc).__name__}: {exc}"
        if headers.get("connection", "").lower() == "close":
            self.close()
        return check_response(status, body, expected)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def client_worker(target: Target, window: Window, result: CellResult) -> None:
    """Sequential requests on one connection until the window ends."""
    connection = Connection(target.port)
    start = time.perf_counter()
    try:
        async with asyncio.timeout(window.end - start + CELL_GRACE_S):
            while (start := time.perf_counter()) < window.end:
                error = await connection.exchange(target.request, target.body)
                result.record(start >= window.start, time.perf_counter() - start, error)
                if error:
                    await asyncio.sleep(0.01)  # no hot loop against a failing server
    except TimeoutError:
        result.record(start >= window.start, 0.0, f"no answer within {CELL_GRACE_S:.0f} s")
    finally:
        connection.close()


async def sample_cpu(target: Target, window: Window, result: CellResult) -> None:
    """Server and client (this process) CPU used between the window's start and end."""
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    procs = target.server_procs()
    server_start = {pid: proc_cpu_seconds(pid) for pid in procs}
    client_start = time.process_time()
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    for pid, name in procs.items():
        used = proc_cpu_seconds(pid) - server_start[pid]
        result.server_cpu_by_name[name] = result.server_cpu_by_name.get(name, 0.0) + used
    result.client_cpu_s = time.process_time() - client_start


async def run_cell(target: Target, clients: int, duration: float, warmup: float) -> CellResult:
    """Warm up, then drive `clients` connections for `duration` seconds."""
    result = CellResult()
    now = time.perf_counter()
    window = Window(now + warmup, now + warmup + duration)
    async with asyncio.TaskGroup() as group:
        group.create_task(sample_cpu(target, window, result))
        for _ in range(clients):
            group.create_task(client_worker(target, window, result))
    result.elapsed = window.end - window.start
    return result


async def sanity_check(target: Target) -> str:
    """One request: status, body and the X-Echo-* headers the DService should see."""
    reader, writer = await asyncio.open_connection(HOST, target.port)
    try:
        writer.write(target.request)
        status, headers, body = await read_response(reader)
    finally:
        writer.close()
    problem = check_response(status, body, target.body)
    expected = {"x-echo-method": "POST", "x-echo-path": ECHO_PATH, "x-echo-query": QUERY}
    wrong = {k: headers.get(k) for k, v in expected.items() if headers.get(k) != v}
    if wrong:
        problem = f"{problem} unexpected headers {wrong}".strip()
    return problem or "ok"


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
# Log scan
# --------------------------------------------------------------------------------------------


def odd_text_line(line: str, strict: bool) -> str:
    """How a non-JSON log line is reported ('' to skip it).

    A process log should hold JSON only (`strict`); the sandbox's own output also holds its
    banner, so there only gRPC core (glog-style) lines and Python errors count.
    """
    text = line.strip()
    glog = GLOG_LINE.match(text)
    if glog:
        return f"gRPC core {glog.group(1)}: {glog.group(2)[:90]}"
    if strict or any(word in text for word in ("Traceback", "Error", "Exception", "Warning")):
        return f"non-JSON: {text[:100]}" if text else ""
    return ""


def scan_log(path: Path, strict: bool) -> Counter[str]:
    """Warning/error events (JSON log lines) and odd non-JSON lines of one log, counted."""
    found: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            odd = odd_text_line(line, strict)
            if odd:
                found[odd] += 1
            continue
        if not isinstance(entry, dict):
            continue
        level = str(entry.get("level", "")).lower()
        if level in LOG_LEVELS:
            detail = entry.get("error") or entry.get("message") or ""
            found[f"{level}: {entry.get('event')} {str(detail)[:80]}".strip()] += 1
    return found


def scan_logs(process_logs: Sequence[Path], sandbox_output: Path) -> list[str]:
    """Log sizes, then one line per distinct warning/error/odd line found, with counts."""
    sizes = ", ".join(
        f"{p.name} {p.stat().st_size / 1024:,.0f} KiB/{len(p.read_bytes().splitlines()):,} lines"
        for p in process_logs
    )
    lines = [f"sandbox log volume: {sizes}"]
    for path in [*process_logs, sandbox_output]:
        if path.is_file():
            for what, count in scan_log(path, path != sandbox_output).most_common(8):
                lines.append(f"  {path.name}: {what} (x{count})")
    return lines


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything the run prints."""

    body_bytes: int
    duration: float
    warmup: float
    gateway_url: str = "-"
    results: dict[tuple[str, int], CellResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def ratio(direct: float, cgn: float, invert: bool) -> str:
    """'x.xx' for cgn/direct (or direct/cgn when `invert`), '-' if undefined."""
    num, den = (direct, cgn) if invert else (cgn, direct)
    if not den or den != den or num != num:
        return "-"
    return f"{num / den:.2f}"


def metric_rows(report: Report, clients: int) -> list[list[str]]:
    """Rows for one concurrency level: metric, direct, through CGN, ratio."""
    cells = [report.results.get((t, clients)) for t in TARGETS]
    if cells[0] is None or cells[1] is None:
        return [[f"c={clients}: not measured", "-", "-", "-"]]
    direct, cgn = cells[0], cells[1]
    metrics: list[tuple[str, Callable[[CellResult], float], str, bool | None]] = [
        ("req/s", lambda r: r.rps, "{:,.0f}", True),
        ("p50 ms", lambda r: r.percentile_ms(0.50), "{:.2f}", False),
        ("p99 ms", lambda r: r.percentile_ms(0.99), "{:.2f}", False),
        ("max ms", lambda r: r.percentile_ms(1.0), "{:.2f}", False),
        ("errors", lambda r: r.errors, "{:,.0f}", None),
        ("server CPU us/req", lambda r: 1e6 * r.server_cpu_s / max(r.ok, 1), "{:,.0f}", False),
        ("client CPU %", lambda r: 100 * r.client_cpu_s / r.elapsed, "{:.0f}", None),
    ]
    rows = []
    for name, get, fmt, invert in metrics:
        a, b = get(direct), get(cgn)
        rows.append(
            [
                f"c={clients}: {name}",
                fmt.format(a),
                fmt.format(b),
                "-" if invert is None else ratio(a, b, invert),
            ]
        )
    return rows


def render_table(report: Report) -> str:
    header = ["metric", "direct", "through CGN", "ratio*"]
    body = [row for clients in CONCURRENCY for row in metric_rows(report, clients)]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        first = line[0].ljust(widths[0])
        return "  ".join([first, *(v.rjust(w) for v, w in zip(line[1:], widths[1:], strict=True))])

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body), rule])


def print_report(report: Report) -> None:
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, aiohttp {aiohttp.__version__}, "
        f"uvloop {version('uvloop')}"
    )
    print(
        "client: minimal raw asyncio HTTP/1.1 client on uvloop (keep-alive, one connection per "
        "concurrent client), in this process"
    )
    print(
        f"request: POST {ECHO_PATH}?{QUERY} with a {report.body_bytes} B body; "
        f"{report.warmup:.1f} s warm-up + {report.duration:.1f} s measured per cell"
    )
    print(f"sandbox gateway: {report.gateway_url}")
    print()
    print(render_table(report))
    print(
        "* ratio: direct/CGN for req/s, CGN/direct for latency and server CPU; above 1 means the "
        "CGN path is slower or costs more.\n"
        "  server CPU: the echo process (direct) or every sandbox process (through CGN). "
        "Latencies: successful requests only."
    )
    for note in report.notes:
        print(note)


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def make_body(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


async def measure(targets: Sequence[Target], report: Report) -> None:
    """Sanity-check each target, then run every cell, interleaving targets per concurrency."""
    for target in targets:
        report.notes.append(f"sanity ({target.label}): {await sanity_check(target)}")
    for clients in CONCURRENCY:
        for target in targets:
            print(f"measuring {target.label}, c={clients} ...", file=sys.stderr, flush=True)
            result = await run_cell(target, clients, report.duration, report.warmup)
            report.results[(target.label, clients)] = result
            if len(result.server_cpu_by_name) > 1:
                report.notes.append(cpu_breakdown(target.label, clients, result))
            for kind, count in result.error_kinds.most_common(3):
                report.notes.append(f"errors ({target.label}, c={clients}): {kind} (x{count})")
            if result.warmup_errors:
                report.notes.append(
                    f"warm-up errors ({target.label}, c={clients}): {result.warmup_errors}"
                )


def cpu_breakdown(label: str, clients: int, result: CellResult) -> str:
    """Server CPU per request by process name, largest first."""
    parts = [
        f"{name} {1e6 * cpu / max(result.ok, 1):,.0f}"
        for name, cpu in sorted(result.server_cpu_by_name.items(), key=lambda item: -item[1])
    ]
    return f"server CPU us/req by process ({label}, c={clients}): " + ", ".join(parts)


async def start_echo(workdir: Path) -> tuple[Child, int]:
    port = free_port()
    echo = await spawn(
        "echo", ["-m", "dservices.echo"], {"CGN_LISTEN": f"{HOST}:{port}"}, workdir / "echo.log"
    )
    return echo, port


async def build_targets(
    echo: Child, echo_port: int, sandbox: Child, info: dict[str, Any], body: bytes
) -> list[Target]:
    """The direct and the through-CGN targets (opens a session at the gateway)."""
    gateway = urlsplit(info["gateway_url"])
    if gateway.hostname != HOST or gateway.port is None:
        raise RuntimeError(f"unexpected gateway_url {info['gateway_url']!r}")
    token = await open_session(info["gateway_url"], info["account_id"], info["api_key"])
    auth = f"Authorization: Bearer {token}\r\n"
    return [
        Target(
            TARGETS[0],
            echo_port,
            encode_request(ECHO_PATH, echo_port, body),
            body,
            lambda: {echo.pid: "echo"},
        ),
        Target(
            TARGETS[1],
            gateway.port,
            encode_request(f"/v1/dservices/echo{ECHO_PATH}", gateway.port, body, auth),
            body,
            lambda: sandbox_process_names(sandbox, info),
        ),
    ]


async def shutdown(
    echo: Child | None, sandbox: Child | None, info: dict[str, Any], report: Report
) -> None:
    """Stop both children by PID and check that nothing of the sandbox is left running."""
    if echo is not None:
        report.notes.append(f"echo (pid {echo.pid}): {await stop_child(echo, ECHO_STOP_TIMEOUT_S)}")
    if sandbox is None:
        return
    watched = sandbox_processes(sandbox, info)
    outcome = await stop_child(sandbox, SANDBOX_STOP_TIMEOUT_S)
    report.notes.append(f"sandbox (pid {sandbox.pid}): {outcome}")
    left = await leftovers(watched)
    listed = ", ".join(f"{p.name}={p.pid}" for p in watched)
    if left:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in left)
        report.notes.append(f"LEFT RUNNING after the sandbox stopped (now SIGKILLed): {names}")
    else:
        report.notes.append(f"no sandbox process left running (checked {listed})")


async def run(args: argparse.Namespace) -> int:
    """Start the children, measure, always stop them, print the report."""
    workdir = Path(tempfile.mkdtemp(prefix="cgn-bench-"))
    state_dir = workdir / "state"
    warmup = min(MAX_WARMUP_S, args.duration / 2)
    report = Report(args.body_bytes, args.duration, warmup)
    echo: Child | None = None
    sandbox: Child | None = None
    info: dict[str, Any] = {}
    status = 0
    try:
        echo, echo_port = await start_echo(workdir)
        sandbox = await spawn(
            "sandbox",
            ["-m", "cgn_cli", "sandbox", "--state-dir", str(state_dir)],
            {},
            workdir / "sandbox.log",
        )
        print("starting echo and the sandbox ...", file=sys.stderr, flush=True)
        await wait_listening(echo, echo_port)
        info = await wait_sandbox_json(sandbox, state_dir / "sandbox.json")
        report.gateway_url = info["gateway_url"]
        targets = await build_targets(echo, echo_port, sandbox, info, make_body(args.body_bytes))
        await measure(targets, report)
    except (RuntimeError, OSError, aiohttp.ClientError, ExceptionGroup) as exc:
        report.notes.append(f"FAILED: {type(exc).__name__}: {exc}")
        status = 1
    finally:
        await shutdown(echo, sandbox, info, report)
        found = scan_logs(sorted((state_dir / "logs").glob("*.log")), workdir / "sandbox.log")
        report.notes.append(f"sandbox logs: {len(found) - 1} distinct warning/error/odd line(s)")
        report.notes.extend(found)
        if args.keep_state:
            report.notes.append(f"state kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print_report(report)  # also when interrupted: shows what was measured and the cleanup
    return status


async def bench_main(args: argparse.Namespace) -> int:
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM cancels like Ctrl-C does, so the `finally` blocks stop the children by PID.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    return await run(args)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--body-bytes", type=int, default=64, help="request body size")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the temporary state directory and logs"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.body_bytes < 0:
        parser.error("--duration must be > 0 and --body-bytes >= 0")
    return args


def main() -> None:
    args = parse_args()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            sys.exit(runner.run(bench_main(args)))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("interrupted; children stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
