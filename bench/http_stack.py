"""Benchmark candidate HTTP server stacks for the CGN REST gateway.

Usage (from the repository root)::

    .venv/bin/python bench/http_stack.py
    .venv/bin/python bench/http_stack.py --duration 2 --large-mib 64 --stacks aiohttp starlette

Each stack runs in its own child process (this same file, started with ``--serve STACK``) bound
to 127.0.0.1 on an ephemeral port that the child reports on stdout. Every server implements
``ANY /echo/{path}``: the request body is read as a stream and written back chunk by chunk (never
buffered whole), with an ``X-Echo-Path`` header. Stacks:

* ``aiohttp``         aiohttp.web on the default asyncio event loop (candidate A)
* ``aiohttp-uvloop``  the same aiohttp.web app on uvloop (A, tuned)
* ``starlette``       Starlette on uvicorn with httptools + uvloop (candidate B)
* ``raw``             hand-written asyncio-streams responder on uvloop (baseline; only understands
                      Content-Length bodies, so it is a floor for per-request overhead, not a
                      usable server)

Measured per stack, from this process:

* small bodies (64 B POST) at 1 and 64 concurrent keep-alive connections for ``--duration``
  seconds each: requests/s, p50 and p99 latency, and the server child's CPU use. The load
  generator here is a minimal raw HTTP/1.1 client on uvloop, because the aiohttp client costs
  more CPU per request (~80 us) than the servers under test (~45-60 us) and would be measured
  instead of them on a 2-core machine.
* a large streamed echo (``--large-mib``, default 256 MiB) uploaded and downloaded at the same
  time with the aiohttp client, repeated for ``--duration`` seconds (at least once): throughput
  in MiB/s, server CPU per GiB, and the server's RSS before and VmHWM (peak RSS) after, which
  shows whether the body was buffered.

Small-body numbers move by up to ~20% between runs on a shared 2-core machine; compare runs.

All children are ended by PID when the run finishes, even on error; a child also exits by
itself if its parent disappears.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import uvloop
from _common import cpu_seconds, read_chunked
from aiohttp import web

if TYPE_CHECKING:
    from starlette.applications import Starlette

STACKS: dict[str, str] = {
    "aiohttp": "aiohttp",
    "aiohttp-uvloop": "aiohttp/uvloop",
    "starlette": "starlette/uvicorn",
    "raw": "raw asyncio/uvloop",
}
HOST = "127.0.0.1"
SCRIPT = Path(__file__).resolve()
SMALL_BODY = bytes(range(64))
CHUNK = 1 << 20
ECHO_HEADER = "X-Echo-Path"
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
BENCH_ERRORS = (OSError, RuntimeError, ValueError, aiohttp.ClientError, asyncio.IncompleteReadError)


# --------------------------------------------------------------------------------------------
# Servers (run in the child process)
# --------------------------------------------------------------------------------------------


async def aiohttp_echo(request: web.Request) -> web.StreamResponse:
    """Stream the request body back as the response body."""
    response = web.StreamResponse(headers={ECHO_HEADER: request.match_info["path"]})
    if request.content_length is not None:
        response.content_length = request.content_length
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    async for chunk in request.content.iter_any():
        await response.write(chunk)
    await response.write_eof()
    return response


async def serve_aiohttp(sock: socket.socket) -> None:
    """Serve the aiohttp.web echo app on an already bound socket until cancelled."""
    app = web.Application()
    app.router.add_route("*", "/echo/{path:.*}", aiohttp_echo)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def build_starlette_app() -> Starlette:
    """Build the Starlette echo app (imported lazily so other stacks do not load it)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send

    class DuplexStreamingResponse(StreamingResponse):
        """StreamingResponse without the concurrent disconnect listener.

        On ASGI spec < 2.4 (uvicorn reports 2.3) Starlette's StreamingResponse calls receive()
        in a parallel task to watch for http.disconnect and discards everything else, i.e. it
        steals request-body chunks from request.stream(): a naive echo loses data or hangs.
        """

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.stream_response(send)

    class Echo:
        """ASGI endpoint; a class (not a function) so that Route accepts every HTTP method."""

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive)
            headers = {ECHO_HEADER: request.path_params["path"]}
            length = request.headers.get("content-length")
            if length is not None:
                headers["content-length"] = length
            response = DuplexStreamingResponse(request.stream(), headers=headers)
            await response(scope, receive, send)

    return Starlette(routes=[Route("/echo/{path:path}", Echo())])


async def serve_starlette(sock: socket.socket) -> None:
    """Serve the Starlette echo app with uvicorn (httptools + uvloop) on a bound socket."""
    import uvicorn

    config = uvicorn.Config(
        build_starlette_app(),
        http="httptools",
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    await uvicorn.Server(config).serve(sockets=[sock])


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Split a raw HTTP/1.1 head into (first line, path, lower-cased headers)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], parts[1] if len(parts) > 1 else "/", headers


async def raw_echo_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Serve one request on a keep-alive connection; return False when the peer is done."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    _, path, headers = parse_head(head[:-4])
    if not path.startswith("/echo/") or "transfer-encoding" in headers:
        writer.write(
            b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        return False
    remaining = int(headers.get("content-length", "0"))
    writer.write(
        f"HTTP/1.1 200 OK\r\nContent-Length: {remaining}\r\n"
        f"{ECHO_HEADER}: {path[len('/echo/') :]}\r\n\r\n".encode("latin-1")
    )
    while remaining > 0:
        chunk = await reader.read(min(remaining, CHUNK))
        if not chunk:
            return False
        remaining -= len(chunk)
        writer.write(chunk)
        await writer.drain()
    await writer.drain()
    return True


async def raw_handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Connection handler for the raw baseline server."""
    try:
        while await raw_echo_one(reader, writer):
            pass
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_raw(sock: socket.socket) -> None:
    """Serve the raw asyncio baseline on a bound socket until cancelled."""
    server = await asyncio.start_server(raw_handle, sock=sock, limit=CHUNK)
    async with server:
        await server.serve_forever()


SERVERS: dict[str, Callable[[socket.socket], Awaitable[None]]] = {
    "aiohttp": serve_aiohttp,
    "aiohttp-uvloop": serve_aiohttp,
    "starlette": serve_starlette,
    "raw": serve_raw,
}


def exit_when_orphaned(loop: asyncio.AbstractEventLoop, parent_pid: int) -> None:
    """Exit the child hard once the benchmark process that started it is gone (polls 1/s)."""
    if os.getppid() != parent_pid:
        os._exit(3)
    loop.call_later(1.0, exit_when_orphaned, loop, parent_pid)


async def child_main(stack: str, parent_pid: int) -> None:
    """Bind an ephemeral port, report it on stdout, then serve forever."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(1024)
    sock.setblocking(False)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    exit_when_orphaned(asyncio.get_running_loop(), parent_pid)
    await SERVERS[stack](sock)


def run_child(stack: str, parent_pid: int) -> None:
    """Entry point of a server child process."""
    factory = asyncio.new_event_loop if stack == "aiohttp" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(child_main(stack, parent_pid))


# --------------------------------------------------------------------------------------------
# Child process management (benchmark process)
# --------------------------------------------------------------------------------------------


@dataclass
class ServerProc:
    """A running server child and the port it reported."""

    proc: asyncio.subprocess.Process
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


async def start_server(stack: str) -> ServerProc:
    """Start a server child for `stack` and wait for it to report its port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--serve",
        stack,
        "--parent-pid",
        str(os.getpid()),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"{stack}: child did not report a port (got {line!r})")
        return ServerProc(proc, int(line.split()[1]))
    except BaseException:
        await stop_server(proc)
        raise


async def stop_server(proc: asyncio.subprocess.Process) -> None:
    """Terminate a child by PID, escalating to SIGKILL if it does not exit in time."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def proc_status_kib(pid: int, key: str) -> int:
    """Read a kB field such as VmRSS or VmHWM from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds consumed so far by `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return cpu_seconds(fields)


# --------------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------------


@dataclass
class SmallResult:
    """Outcome of one small-body cell."""

    requests: int = 0
    elapsed: float = 0.0
    server_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


@dataclass
class LargeResult:
    """Outcome of the repeated large streamed echoes."""

    mib: int
    runs: int
    seconds: float
    server_cpu: float
    rss_before_kib: int
    hwm_before_kib: int
    hwm_after_kib: int

    @property
    def mib_per_s(self) -> float:
        return self.mib * self.runs / self.seconds


def small_request(path: str, body: bytes) -> bytes:
    """Encode a keep-alive POST with a Content-Length body."""
    head = (
        f"POST /echo/{path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def read_response(
    reader: asyncio.StreamReader,
) -> tuple[str, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (status line, headers, body) from a keep-alive stream."""
    status, _, headers = parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return status, headers, await read_chunked(reader)
    return (
        status,
        headers,
        await reader.readexactly(int(headers.get("content-length", "0"))),
    )


async def small_worker(port: int, request: bytes, stop_at: float, result: SmallResult) -> None:
    """One keep-alive connection issuing sequential requests until `stop_at`."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while (start := time.perf_counter()) < stop_at:
            writer.write(request)
            status, _, body = await read_response(reader)
            result.latencies.append(time.perf_counter() - start)
            if not status.startswith("HTTP/1.1 200") or body != SMALL_BODY:
                raise RuntimeError(f"bad echo: {status!r} {body[:32]!r}")
            result.requests += 1
    finally:
        writer.close()


async def run_small(server: ServerProc, clients: int, duration: float) -> SmallResult:
    """Drive `clients` concurrent connections for `duration` seconds and collect stats."""
    request = small_request("small/bench", SMALL_BODY)
    result = SmallResult()
    cpu_start = proc_cpu_seconds(server.pid)
    start = time.perf_counter()
    async with asyncio.timeout(duration + 30.0), asyncio.TaskGroup() as group:
        for _ in range(clients):
            group.create_task(small_worker(server.port, request, start + duration, result))
    result.elapsed = time.perf_counter() - start
    result.server_cpu = proc_cpu_seconds(server.pid) - cpu_start
    return result


async def upload_chunks(total_mib: int) -> AsyncIterator[bytes]:
    """Yield `total_mib` chunks of 1 MiB (the same buffer each time: no client-side growth)."""
    block = b"\xa5" * CHUNK
    for _ in range(total_mib):
        yield block


async def large_echo(session: aiohttp.ClientSession, port: int, total_mib: int) -> float:
    """Upload and download `total_mib` MiB concurrently; return the elapsed seconds."""
    start = time.perf_counter()
    headers = {"Content-Length": str(total_mib * CHUNK)}
    url = f"http://{HOST}:{port}/echo/large/blob"
    async with session.put(url, data=upload_chunks(total_mib), headers=headers) as response:
        received = 0
        async for chunk in response.content.iter_any():
            received += len(chunk)
    elapsed = time.perf_counter() - start
    if response.status != 200 or received != total_mib * CHUNK:
        raise RuntimeError(f"large echo failed: status {response.status}, {received} bytes")
    return elapsed


async def run_large(server: ServerProc, total_mib: int, duration: float) -> LargeResult:
    """Repeat the large streamed echo for about `duration` s (at least once); track memory."""
    rss_before = proc_status_kib(server.pid, "VmRSS")
    hwm_before = proc_status_kib(server.pid, "VmHWM")
    cpu_start = proc_cpu_seconds(server.pid)
    runs, seconds = 0, 0.0
    timeout = aiohttp.ClientTimeout(total=120.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while runs == 0 or seconds < duration:
            seconds += await large_echo(session, server.port, total_mib)
            runs += 1
    cpu = proc_cpu_seconds(server.pid) - cpu_start
    hwm_after = proc_status_kib(server.pid, "VmHWM")
    return LargeResult(total_mib, runs, seconds, cpu, rss_before, hwm_before, hwm_after)


async def sanity_check(port: int, stack: str) -> str:
    """Check any-method routing, path header, and (except raw) chunked request bodies."""
    payload = b"x" * 100_000

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 30_000):
            yield payload[i : i + 30_000]

    async with aiohttp.ClientSession() as session:
        url = f"http://{HOST}:{port}/echo/a/b%20c"
        async with session.request("PROPFIND", url, data=payload) as resp:
            if resp.status != 200 or await resp.read() != payload:
                return f"FAIL PROPFIND {resp.status}"
            if resp.headers.get(ECHO_HEADER) not in ("a/b c", "a/b%20c"):
                return f"FAIL header {resp.headers.get(ECHO_HEADER)!r}"
        if stack == "raw":
            return "ok (no chunked)"
        async with session.post(url, data=chunked()) as resp:
            if resp.status != 200 or await resp.read() != payload:
                return f"FAIL chunked {resp.status}"
    return "ok"


# --------------------------------------------------------------------------------------------
# Orchestration and report
# --------------------------------------------------------------------------------------------


@dataclass
class StackReport:
    """Everything measured for one stack."""

    stack: str
    sanity: str = ""
    idle_rss_kib: int = 0
    small: dict[int, SmallResult] = field(default_factory=dict)
    large: LargeResult | None = None
    error: str = ""


def describe(exc: BaseException) -> str:
    """One short line for a failure, unwrapping TaskGroup exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:60]


async def measure_stack(stack: str, duration: float, large_mib: int) -> StackReport:
    """Start one stack's server, run every cell against it, and always stop it."""
    report = StackReport(stack)
    server = await start_server(stack)
    try:
        report.idle_rss_kib = proc_status_kib(server.pid, "VmRSS")
        report.sanity = await sanity_check(server.port, stack)
        await run_small(server, 8, min(0.5, duration))  # warm-up, discarded
        for clients in (1, 64):
            report.small[clients] = await run_small(server, clients, duration)
        report.large = await run_large(server, large_mib, duration)
    except (*BENCH_ERRORS, ExceptionGroup) as exc:  # show it in the table, go on
        report.error = describe(exc)
    finally:
        await stop_server(server.proc)
    return report


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def small_rows(reports: Sequence[StackReport], clients: int) -> list[tuple[str, list[str]]]:
    """Table rows for one small-body concurrency level."""

    def cell(fmt: Callable[[SmallResult], str]) -> list[str]:
        return [fmt(r.small[clients]) if clients in r.small else "-" for r in reports]

    tag = f"64 B, c={clients}"
    return [
        (f"{tag}: req/s", cell(lambda s: f"{s.rps:,.0f}")),
        (f"{tag}: p50 ms", cell(lambda s: f"{s.percentile_ms(0.50):.3f}")),
        (f"{tag}: p99 ms", cell(lambda s: f"{s.percentile_ms(0.99):.3f}")),
        (
            f"{tag}: server CPU %",
            cell(lambda s: f"{100 * s.server_cpu / s.elapsed:.0f}"),
        ),
        (
            f"{tag}: server CPU us/req",
            cell(lambda s: f"{1e6 * s.server_cpu / s.requests:.0f}"),
        ),
    ]


def large_rows(reports: Sequence[StackReport], total_mib: int) -> list[tuple[str, list[str]]]:
    """Table rows for the large streamed echo."""

    def cell(fmt: Callable[[LargeResult], str]) -> list[str]:
        return [fmt(r.large) if r.large else "-" for r in reports]

    tag = f"{total_mib} MiB echo"
    return [
        (f"{tag}: MiB/s (each way)", cell(lambda g: f"{g.mib_per_s:,.0f}")),
        (f"{tag}: runs", cell(lambda g: str(g.runs))),
        (
            f"{tag}: server CPU s/GiB",
            cell(lambda g: f"{1024 * g.server_cpu / g.mib / g.runs:.2f}"),
        ),
        (f"{tag}: RSS before MiB", cell(lambda g: mib(g.rss_before_kib))),
        (f"{tag}: VmHWM before MiB", cell(lambda g: mib(g.hwm_before_kib))),
        (f"{tag}: VmHWM after MiB", cell(lambda g: mib(g.hwm_after_kib))),
    ]


def render_table(reports: Sequence[StackReport], total_mib: int) -> str:
    """Render all results as a plain-text table, one column per stack."""
    rows: list[tuple[str, list[str]]] = [
        ("sanity (any method, chunked)", [r.sanity or "-" for r in reports]),
        (
            "idle RSS MiB",
            [mib(r.idle_rss_kib) if r.idle_rss_kib else "-" for r in reports],
        ),
        *small_rows(reports, 1),
        *small_rows(reports, 64),
        *large_rows(reports, total_mib),
    ]
    if any(r.error for r in reports):
        rows.append(("error", [r.error or "-" for r in reports]))
    header = ["metric", *(STACKS[r.stack] for r in reports)]
    body = [[name, *values] for name, values in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        first = line[0].ljust(widths[0])
        return "  ".join([first, *(v.rjust(w) for v, w in zip(line[1:], widths[1:], strict=True))])

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


async def bench_main(stacks: Sequence[str], duration: float, large_mib: int) -> None:
    """Measure every requested stack in turn and print the comparison table."""
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM cancels like Ctrl-C does, so the `finally` blocks stop the children by PID.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    reports = []
    for stack in stacks:
        print(f"measuring {STACKS[stack]} ...", file=sys.stderr, flush=True)
        reports.append(await measure_stack(stack, duration, large_mib))
    print(f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs")
    print(render_table(reports, large_mib))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stacks", nargs="+", choices=list(STACKS), default=list(STACKS))
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per small cell")
    parser.add_argument("--large-mib", type=int, default=256, help="size of the large echo")
    parser.add_argument("--serve", choices=list(STACKS), help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.serve:
        run_child(args.serve, args.parent_pid)
        return
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(bench_main(args.stacks, args.duration, args.large_mib))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("interrupted; server children stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
