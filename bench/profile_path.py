"""Profile the CGN request path: where each process's CPU goes while wrk drives small
requests through a sandbox (gateway -> node -> miner -> echo).

Usage (from the repository root)::

    .venv/bin/python bench/profile_path.py [--seconds 10] [--connections 64] [--out DIR]

py-spy (a sampling profiler that sees native frames: ``--native``; it stops the process for
each sample, so the req/s printed while it runs is lower than unprofiled) records the gateway,
the node and one miner at once
while wrk sends ``POST`` requests with a 64 B body. For each process it prints the share of
samples by the leaf frame (where the CPU is spent, own time) and by the CGN function on the
stack closest to the leaf (which of our functions the time is spent for), and it keeps the
raw collapsed stacks in ``--out`` (flame graphs: ``flamegraph.pl DIR/node.txt``).

Samples include both the Python and the native frames of the event loop's thread and of
gRPC's own threads. Shares, not absolute times, compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _wrk import ensure_wrk, run_wrk, write_script

from tests.helpers.sandbox import RunningSandbox, start_sandbox, stop_sandbox

#: Our packages: the frame nearest the leaf from one of these names the work.
_PACKAGES = "cgn_node|cgn_common|gateway|miner|settlement|central|dservices"
_OURS = re.compile(rf"\(({_PACKAGES})/[^/:]+\.py")
#: The frame an event-loop callback runs under: asyncio's, or the CGN's uvloop runner.
_LOOP_FRAME = re.compile(r"^(Handle\._run \(|run \(cgn_common/loop\.py)")
#: Leaf frames of a thread that waits (the event loop's epoll, a worker's futex wait, which
#: py-spy shows as an unnamed libc address, a child watcher's wait4): not CPU, left out.
_WAITS = (
    "epoll_wait|epoll_pwait|wait4|poll|select|nanosleep|clock_nanosleep|pthread_cond_wait|"
    "pthread_cond_timedwait|__futex_abstimed_wait_common|accept4|read"
)
_IDLE = re.compile(rf"^(0x[0-9a-f]+ \(libc\.so\.6\)|({_WAITS}) \(libc\.so\.6\))$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` as ``file.py:func``."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{Path(match['file']).name}:{match['func']}"


def _aggregate(raw: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Busy samples in all (waiting threads left out); by leaf frame; by the CGN frame
    nearest the leaf."""
    leaves: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if _IDLE.match(frames[-1]):
            continue
        total += n
        leaves[_short(frames[-1])] += n
        # Only what runs inside an event-loop callback is attributed (the frames below it are
        # the process's entry point and the loop itself: asyncio's Handle._run, or, on uvloop,
        # whose loop is C, everything up to cgn_common/loop.py's run).
        start = max((i for i, f in enumerate(frames) if _LOOP_FRAME.match(f)), default=-1) + 1
        mine = next(
            (f for f in reversed(frames[start:]) if _OURS.search(f)),
            "(no CGN frame: event loop, gRPC and aiohttp machinery, other threads)",
        )
        ours[_short(mine)] += n
    return total, leaves, ours


def _print_table(title: str, total: int, counts: collections.Counter[str], top: int) -> None:
    print(f"\n{title}")
    print("| share | frame |")
    print("| ---: | --- |")
    for frame, n in counts.most_common(top):
        print(f"| {100 * n / total:.1f}% | `{frame}` |")


async def _profile(sb: RunningSandbox, out: Path, seconds: int, connections: int) -> None:
    wrk = ensure_wrk()
    token = await sb.session_token()
    script = write_script(
        out / "wrk.lua",
        b"x" * 64,
        {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
    )
    url = f"{sb.url}/v1/dservices/echo/profile?run=1"
    await run_wrk(wrk, url, script, connections, 1, 1)  # warm-up
    processes = {
        name: int(p["pid"])
        for name, p in sb.current()["processes"].items()
        if name in ("gateway", "node", "miner-1")
    }
    load = asyncio.create_task(run_wrk(wrk, url, script, connections, 1, seconds + 2))
    await asyncio.sleep(1)  # wrk is connected and the path busy
    spies = [
        await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--native",
            "--format",
            "raw",
            "--output",
            str(out / f"{name}.txt"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for name, pid in processes.items()
    ]
    for spy in spies:
        await spy.wait()
    result = await load
    print(
        f"wrk -c{connections}: {result.rps:,.0f} req/s while profiled "
        f"(py-spy at 200 Hz, native frames)"
    )
    for name in processes:
        raw = out / f"{name}.txt"
        if not raw.exists():
            print(f"\n{name}: no profile (py-spy failed)")
            continue
        total, leaves, ours = _aggregate(raw)
        print(f"\n## {name}: {total} busy samples")
        _print_table(f"{name}, own time by leaf frame (top 15)", total, leaves, 15)
        _print_table(f"{name}, by the CGN function nearest the leaf (top 15)", total, ours, 15)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="profiled seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="keep the raw stacks here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cgn-profile-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        sb = start_sandbox(Path(tmp) / "state", Path(tmp) / "sandbox.log", dservices="echo")
        try:
            await _profile(sb, out, args.seconds, args.connections)
        finally:
            stop_sandbox(sb.process)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
