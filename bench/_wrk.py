"""wrk as the benchmarks' load generator: installing it, its Lua request script, one run and
its figures.

wrk (Debian's package) is a native HTTP/1.1 client: at the rates a Python server reaches it uses
a small part of one core, where a Python client would take the CPU it is meant to measure. The
Lua script sets the method, headers and body of every request, and its ``done()`` prints one
JSON line with the counts and latency percentiles (microseconds) that :func:`run_wrk` parses.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RESULT_PREFIX = "WRK_RESULT "
WRK_TIMEOUT_S = 10  # a response slower than this counts as a timeout error
WRK_EXTRA_WAIT_S = 30.0  # wrk must have exited this long after its duration

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    "WRK_RESULT ", summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def ensure_wrk() -> str:
    """The path of wrk, installed from Debian's package (after apt-get update) when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get installed wrk but it is not on PATH")
    return found


def lua_string(data: bytes) -> str:
    """``data`` as a Lua string literal (decimal escapes for anything but plain ASCII)."""
    plain = set(range(0x20, 0x7F)) - {ord('"'), ord("\\")}
    return '"' + "".join(chr(b) if b in plain else f"\\{b:03d}" for b in data) + '"'


def write_script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk Lua script: POST ``body`` with ``headers``; ``done()`` prints the result line."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body)}"]
    for name, value in headers.items():
        lines.append(f"wrk.headers[{lua_string(name.encode())}] = {lua_string(value.encode())}")
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reported, and the CPU wrk itself used."""

    requests: int
    duration_s: float
    connect: int
    read: int
    write: int
    status: int
    timeout: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    cpu_s: float

    @property
    def errors(self) -> int:
        """Non-2xx/3xx answers plus socket errors (connect, read, write, timeout)."""
        return self.connect + self.read + self.write + self.status + self.timeout

    @property
    def ok(self) -> int:
        """Answers with a 2xx/3xx status."""
        return self.requests - self.status

    @property
    def rps(self) -> float:
        """Good answers per second."""
        return self.ok / self.duration_s if self.duration_s else 0.0

    def error_kinds(self) -> dict[str, int]:
        kinds = ("connect", "read", "write", "status", "timeout")
        return {k: getattr(self, k) for k in kinds if getattr(self, k)}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run_wrk(
    wrk: str, url: str, script: Path, connections: int, threads: int, seconds: int
) -> WrkResult:
    """One wrk run; raises RuntimeError when it fails or prints no result line.

    wrk's CPU is the growth of RUSAGE_CHILDREN across the run: no other child of the bench
    exits while wrk runs (the servers live until the end).
    """
    cpu_before = _children_cpu_s()
    proc = await asyncio.create_subprocess_exec(
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(script),
        url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + WRK_EXTRA_WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    cpu_s = _children_cpu_s() - cpu_before
    text = out.decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk exited {proc.returncode} without a result:\n{text[-2000:]}")
    raw = json.loads(line[len(RESULT_PREFIX) :])
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        connect=raw["connect"],
        read=raw["read"],
        write=raw["write"],
        status=raw["status"],
        timeout=raw["timeout"],
        p50_ms=raw["p50_us"] / 1e3,
        p90_ms=raw["p90_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        max_ms=raw["max_us"] / 1e3,
        mean_ms=raw["mean_us"] / 1e3,
        cpu_s=cpu_s,
    )
