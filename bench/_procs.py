"""Child processes of the benchmarks: starting them, reading their CPU and identity from
/proc, stopping them by PID, and checking that none is left running."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import uvloop
from _common import cpu_seconds

from cgn_common.process import dies_with_this_process

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
LEFTOVER_WAIT_S = 5.0
POLL_S = 0.1


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


def proc_context_switches(pid: int) -> int:
    """Context switches (voluntary and not) of every thread of ``pid`` so far (0 once it is
    gone): each is a thread put to sleep or preempted and another run, which the CPU figures
    pay for in the kernel (docs/performance.md). Read per thread: /proc/<pid>/status, which
    psutil's ``num_ctx_switches`` reads, counts the main thread's only."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        for line in status.splitlines():
            if line.startswith((b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


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
    """Every live descendant of `root` (children, grandchildren, ...); zombies left out."""
    try:
        found = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    alive = []
    for process in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
    return alive


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


async def spawn(
    name: str,
    args: Sequence[str],
    env: dict[str, str],
    output: Path,
    *,
    pipes: bool = False,
    cwd: Path | None = None,
) -> Child:
    """Start `sys.executable args...` with stdout and stderr going to `output` (with `pipes`,
    stdin and stdout are pipes instead, stderr still goes to `output`).

    The child gets SIGTERM from the kernel if this process dies without stopping it.
    """
    with output.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipes else out,
            stderr=out,
            preexec_fn=dies_with_this_process(),
            cwd=cwd,
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
    deadline = time.monotonic() + START_TIMEOUT_S
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
    raise RuntimeError(f"{child.name} did not listen on port {port} within {START_TIMEOUT_S} s")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None while it does not exist (or is not complete)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


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


def run_bench(
    run: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> None:
    """Runs ``run(args)`` on uvloop and exits with its status. SIGTERM cancels it as Ctrl-C
    does, so its ``finally`` blocks stop the children by PID."""

    async def cancellable() -> int:
        main_task = asyncio.current_task()
        assert main_task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        return await run(args)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            sys.exit(runner.run(cancellable()))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("interrupted; children stopped", file=sys.stderr)
        sys.exit(130)
