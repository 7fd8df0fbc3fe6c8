"""Benchmark what fanning work out over many miner connections costs the transport alone:
the 2-hop floor of bench/request_path.py with 2, 100 and 1,000 responder streams.

Usage (from the repository root)::

    .venv/bin/python bench/link_fanout.py
    .venv/bin/python bench/link_fanout.py --steps 2,1000 --connections 1000 --duration 5

The processes are bench/_hop.py's (each its own process on 127.0.0.1, the loop of
``--loop``): an aiohttp ``front`` making one grpc.aio ``WorkService.Call`` per request (mutual
TLS) to a ``relay``, which deals each call round robin over the connected responder streams
(the real ``MinerLinkService.Connect`` messages, server-authenticated TLS, the CGN's
``StreamWriter`` with batching) as the node's broker deals work over free miners; the
``--responder-procs`` (default 2) ``responder`` processes hold the streams, one TLS
connection each as separate miners have, and answer every assignment at once. No
authentication, broker, billing or DService: only the path's processes and hops.

Per step (``--steps``, default 2,100,1000 streams; as in node_scale, streams are added step
by step and stay connected, so no call is ever left on a stream that ended): a 1 s wrk
warm-up, then a ``--duration`` s wrk run (default 5) with
``--connections`` (default 1,000, node_scale's requests in flight) keep-alive connections;
printed: req/s, p50/p99, errors, and CPU per request of the relay, the front and the
responders (utime+stime from /proc around the run), and the relay's RSS. Then the ratio of the
last step's req/s to the first's and of the relay's CPU per request.

What it answers: bench/node_scale.py's line "1,000 miners within 20% of 2" holds or not for
the node; this bench measures the same fan-out for a process that does nothing but forward.
With 2 streams each write and read carries many calls (the writer batches what queued up);
with more streams than calls in flight each call is a write and a read on a connection of its
own, and that costs what it costs whatever the node does.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _procs import (
    HOST,
    Child,
    free_port,
    proc_cpu_seconds,
    run_bench,
    spawn,
    stop_child,
    wait_listening,
)
from _wrk import ensure_wrk, run_wrk, write_script
from request_path import hop_certificates

BENCH_DIR = Path(__file__).resolve().parent
HOP = str(BENCH_DIR / "_hop.py")
CONNECT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
WARMUP_S = 1


@dataclass
class Step:
    streams: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_kinds: dict[str, int]
    relay_us: float
    front_us: float
    responders_us: float
    relay_rss_mib: float


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def start_responders(
    streams: int,
    procs: int,
    stream_port: int,
    ca: str,
    loop: list[str],
    workdir: Path,
    first_index: int,
) -> list[Child]:
    """``streams`` responder streams over ``procs`` processes; returns once every stream was
    welcomed by the relay."""
    counts = [streams // procs + (i < streams % procs) for i in range(procs)]
    children = []
    for index, count in enumerate((c for c in counts if c), start=first_index):
        args = [HOP, "responder", "--upstream", f"{HOST}:{stream_port}", "--ca", ca]
        children.append(
            await spawn(
                f"responders-{index}",
                [*args, "--streams", str(count), *loop],
                {},
                workdir / f"responders-{index}.log",
                pipes=True,
            )
        )
    for child in children:
        assert child.proc.stdout is not None
        line = await asyncio.wait_for(child.proc.stdout.readline(), CONNECT_TIMEOUT_S)
        if not line.startswith(b"connected"):
            raise RuntimeError(f"{child.name} did not connect:\n{child.output_tail()}")
    return children


async def measure(
    wrk: str,
    url: str,
    script: Path,
    args: argparse.Namespace,
    relay: Child,
    front: Child,
    responders: list[Child],
    streams: int,
) -> Step:
    await run_wrk(wrk, url, script, args.connections, 1, WARMUP_S)
    procs = {"relay": [relay], "front": [front], "responders": responders}
    # Every responder process counts: they all hold streams the relay deals calls to.
    before = {name: sum(proc_cpu_seconds(c.pid) for c in kids) for name, kids in procs.items()}
    result = await run_wrk(wrk, url, script, args.connections, 1, args.duration)
    used = {
        name: sum(proc_cpu_seconds(c.pid) for c in kids) - before[name]
        for name, kids in procs.items()
    }
    per = {name: 1e6 * cpu / max(1, result.requests) for name, cpu in used.items()}
    return Step(
        streams,
        result.requests / result.duration_s,
        result.p50_ms,
        result.p99_ms,
        result.errors,
        result.error_kinds(),
        per["relay"],
        per["front"],
        per["responders"],
        rss_mib(relay.pid),
    )


def print_table(steps: list[Step]) -> None:
    print(
        f"{'streams':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'relay us/req':>13} {'front us/req':>13} {'responders us/req':>18} "
        f"{'relay RSS MiB':>14}"
    )
    for s in steps:
        print(
            f"{s.streams:>7} {s.rps:>8,.0f} {s.p50_ms:>8.1f} {s.p99_ms:>8.1f} {s.errors:>7} "
            f"{s.relay_us:>13,.0f} {s.front_us:>13,.0f} {s.responders_us:>18,.0f} "
            f"{s.relay_rss_mib:>14.1f}"
        )
    if len(steps) > 1:
        first, last = steps[0], steps[-1]
        print(
            f"{last.streams} streams against {first.streams}: req/s {last.rps / first.rps:.2f}, "
            f"relay CPU per request {last.relay_us / first.relay_us:.2f}x"
        )


def stop_order(child: Child) -> int:
    """The front first (its calls in flight still find their streams), then the responders
    (each stream ends as its holder leaves), the relay last."""
    return {"front": 0, "relay": 2}.get(child.name, 1)


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="cgn-fanout-"))
    loop = ["--uvloop"] if args.loop == "uvloop" else []
    children: list[Child] = []
    steps: list[Step] = []
    status = 0
    try:
        wrk = await asyncio.to_thread(ensure_wrk)
        relay_tls, front_tls = await asyncio.to_thread(hop_certificates, workdir / "certs")
        ca = relay_tls[relay_tls.index("--ca") + 1]
        work_port, stream_port, front_port = free_port(), free_port(), free_port()
        relay = await spawn(
            "relay",
            [
                *(HOP, "relay", "--listen", f"{HOST}:{work_port}"),
                *("--stream-listen", f"{HOST}:{stream_port}", *relay_tls, *loop),
            ],
            {},
            workdir / "relay.log",
        )
        children.append(relay)
        front = await spawn(
            "front",
            [
                *(HOP, "front", "--listen", f"{HOST}:{front_port}"),
                *("--upstream", f"{HOST}:{work_port}", *front_tls, *loop),
            ],
            {},
            workdir / "front.log",
        )
        children.insert(0, front)
        await wait_listening(relay, stream_port)
        await wait_listening(front, front_port)
        url = f"http://{HOST}:{front_port}/bench/fanout"
        script = write_script(workdir / "wrk.lua", b"x" * 64, {})
        print(
            f"link_fanout: steps {args.steps} streams over {args.responder_procs} responder "
            f"processes, {args.connections} connections in flight (wrk), loop {args.loop}, "
            f"warm-up {WARMUP_S} s + {args.duration} s per step",
            flush=True,
        )
        responders: list[Child] = []
        connected = 0
        for streams in args.steps:
            added = await start_responders(
                streams - connected,
                args.responder_procs,
                stream_port,
                ca,
                loop,
                workdir,
                len(responders),
            )
            connected = streams
            responders.extend(added)
            children.extend(added)
            step = await measure(wrk, url, script, args, relay, front, responders, streams)
            steps.append(step)
            kinds = f" (errors: {step.error_kinds})" if step.errors else ""
            print(f"  {streams} streams: {step.rps:,.0f} req/s{kinds}", flush=True)
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"link_fanout failed: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        for child in sorted(children, key=stop_order):
            outcome = await stop_child(child, STOP_TIMEOUT_S)
            print(f"{child.name} (pid {child.pid}): {outcome}")
        if args.keep_state:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(steps)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--steps", type=lambda s: [int(x) for x in s.split(",")], default=[2, 100, 1000]
    )
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--responder-procs", type=int, default=2)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--keep-state", action="store_true", help="keep the logs")
    args = parser.parse_args()
    run_bench(run, args)


if __name__ == "__main__":
    main()
