"""Should aiohttp stay the gateway's HTTP server once its limits are in? aiohttp with the
gateway's own runner vs Starlette under uvicorn, with the same limits where uvicorn has them,
loaded by wrk (a native load generator) and attacked by slow connections.

Usage (from the repository root; wrk comes from Debian: apt-get install wrk)::

    .venv/bin/python bench/gateway_server.py
    .venv/bin/python bench/gateway_server.py --duration 3 --stacks aiohttp uvicorn-httptools

Each stack runs in its own child process (this file with ``--serve STACK``) on 127.0.0.1 and
serves the same two routes: ``GET /healthz`` (a small JSON answer) and ``POST /echo`` (the body
read with the gateway's limit, 413 JSON above it, echoed back). Stacks:

* ``aiohttp``: ``gateway._http.GatewayRunner`` itself (the gateway's limits and timeouts, its
  JSON parser errors), on the default asyncio loop as the gateway runs;
* ``uvicorn-httptools``: Starlette on uvicorn with httptools and uvloop (uvicorn's fastest);
  ``timeout_keep_alive`` set to the same idle timeout; no header count or size limit exists;
* ``uvicorn-h11``: the same on uvicorn's h11 protocol, which has
  ``h11_max_incomplete_event_size`` (header bytes) but no header count limit.

Per stack, each cell ``--duration`` seconds of wrk (after a 1 s warm-up): GET /healthz at 1 and
64 connections, POST /echo (64 B) at 64 connections, and GET /healthz at 64 connections while
200 slowloris connections (one header line every second, never ending the head) and 200 idle
connections are held against the server. Reported: requests/s, p50/p99 latency (wrk), the
server's CPU per request (/proc), and how many of the 400 attackers the server closed within
the idle timeout (``--idle-timeout``, default 5 s) plus 3 s.

Numbers move by 10-20% between runs on a shared 2-core machine; compare within one run.
Children are ended by PID when the run ends, even on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import cpu_seconds

HOST = "127.0.0.1"
STACKS = ("aiohttp", "uvicorn-httptools", "uvicorn-h11")
BODY_LIMIT = 64 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 8190
ATTACKERS = 200
POST_LUA = 'wrk.method = "POST"\nwrk.body = string.rep("x", 64)\n'


# --------------------------------------------------------------------------------------------
# The servers (child processes)
# --------------------------------------------------------------------------------------------


def serve_aiohttp(sock: socket.socket, idle_timeout_s: int) -> None:
    from aiohttp import web

    from gateway._http import GatewayRunner
    from gateway.config import GatewayConfig

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "serving"})

    async def echo(request: web.Request) -> web.Response:
        if (request.content_length or 0) > BODY_LIMIT:
            return web.json_response({"error": {"code": "RESOURCE_EXHAUSTED"}}, status=413)
        body = await request.content.read(BODY_LIMIT + 1)
        if len(body) > BODY_LIMIT:
            return web.json_response({"error": {"code": "RESOURCE_EXHAUSTED"}}, status=413)
        return web.Response(body=body)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_post("/echo", echo)
        config = GatewayConfig(
            idle_timeout_s=idle_timeout_s,
            max_headers=MAX_HEADERS,
            max_header_bytes=MAX_HEADER_BYTES,
        )
        runner = GatewayRunner(app, config)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        print("serving", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_uvicorn(sock: socket.socket, idle_timeout_s: int, http: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "serving"})

    async def echo(request: Request) -> Response:
        if int(request.headers.get("content-length", "0")) > BODY_LIMIT:
            return JSONResponse({"error": {"code": "RESOURCE_EXHAUSTED"}}, status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > BODY_LIMIT:
                return JSONResponse({"error": {"code": "RESOURCE_EXHAUSTED"}}, status_code=413)
        return Response(body)

    app = Starlette(routes=[Route("/healthz", healthz), Route("/echo", echo, methods=["POST"])])
    config = uvicorn.Config(
        app,
        http=http,
        loop="uvloop",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=idle_timeout_s,
        h11_max_incomplete_event_size=MAX_HEADERS * MAX_HEADER_BYTES if http == "h11" else None,
        backlog=1024,
    )
    print("serving", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def serve(stack: str, fd: int, idle_timeout_s: int) -> None:
    sock = socket.socket(fileno=fd)
    if stack == "aiohttp":
        serve_aiohttp(sock, idle_timeout_s)
    else:
        serve_uvicorn(sock, idle_timeout_s, stack.removeprefix("uvicorn-"))


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass
class Cell:
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    errors: int = 0
    cpu_us: float = float("nan")
    closed: str = "-"


@dataclass
class Child:
    stack: str
    proc: subprocess.Popen[bytes]
    port: int
    cells: dict[str, Cell] = field(default_factory=dict)


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return cpu_seconds(fields)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


async def wrk(port: int, path: str, connections: int, duration: float, lua: Path | None) -> Cell:
    args = ["wrk", "--latency", "-t", str(min(2, connections)), "-c", str(connections)]
    args += [
        "-d",
        f"{max(1, round(duration))}s",  # wrk takes whole seconds
        *(["-s", str(lua)] if lua else []),
        f"http://{HOST}:{port}{path}",
    ]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE)
    out = (await proc.communicate())[0].decode()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk {' '.join(args)} printed no rate:\n{out}")
    cell = Cell(rps=float(rps.group(1)))
    for name, attr in (("50%", "p50_ms"), ("99%", "p99_ms")):
        found = re.search(rf"^\s+{name}\s+(\S+)", out, re.M)
        if found:
            setattr(cell, attr, _ms(found.group(1)))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    cell.errors = (int(bad.group(1)) if bad else 0) + (
        sum(int(g) for g in errors.groups()) if errors else 0
    )
    return cell


async def measured(
    child: Child, path: str, connections: int, duration: float, lua: Path | None
) -> Cell:
    await wrk(child.port, path, connections, 1.0, lua)  # warm-up
    before = proc_cpu(child.proc.pid)
    cell = await wrk(child.port, path, connections, duration, lua)
    used = proc_cpu(child.proc.pid) - before
    cell.cpu_us = 1e6 * used / max(1.0, cell.rps * duration)
    return cell


async def attacker(port: int, trickle: bool, limit_s: float) -> bool:
    """True when the server closed this connection within ``limit_s``."""
    reader, writer = await asyncio.open_connection(HOST, port)
    deadline = time.monotonic() + limit_s
    try:
        if trickle:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        index = 0
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                if trickle:
                    writer.write(b"X-Slow-%d: 1\r\n" % index)
                    index += 1
                continue
            if not data:
                return True
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        writer.close()


async def under_attack(child: Child, duration: float, idle_timeout_s: int) -> Cell:
    limit_s = max(duration + 1, idle_timeout_s + 3)
    attackers = [
        asyncio.create_task(attacker(child.port, i % 2 == 0, limit_s)) for i in range(2 * ATTACKERS)
    ]
    await asyncio.sleep(0.5)  # let them connect and start trickling before the load
    cell = await measured(child, "/healthz", 64, duration, None)
    closed = sum(await asyncio.gather(*attackers))
    cell.closed = f"{closed}/{2 * ATTACKERS}"
    return cell


def start_child(stack: str, idle_timeout_s: int, log: Path) -> Child:
    """Starts ``stack`` on a socket bound here (so its port is known) and waits until it
    serves (bounded)."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    here = Path(__file__).resolve()
    command = [sys.executable, str(here), "--serve", stack, "--fd", str(sock.fileno())]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--idle-timeout", str(idle_timeout_s)],
            pass_fds=[sock.fileno()],
            stdout=subprocess.PIPE,
            stderr=out,
            cwd=here.parents[1],
            env={**os.environ, "PYTHONPATH": str(here.parents[1])},
        )
    sock.close()
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready or proc.stdout.readline().strip() != b"serving":
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"{stack} did not start: {log.read_text()[-2000:]}")
    return Child(stack, proc, port)


def stop_child(child: Child) -> None:
    child.proc.terminate()
    try:
        child.proc.wait(10)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait(10)


ATTACKED = "healthz c=64 + 400 slow"
COLUMNS = (
    ("healthz c=1", "/healthz", 1, None),
    ("healthz c=64", "/healthz", 64, None),
    ("echo 64 B c=64", "/echo", 64, "post"),
)


async def measure(
    stacks: list[str], duration: float, idle_timeout_s: int, workdir: Path
) -> list[Child]:
    """Every cell of every stack, one stack at a time; each child stopped by PID after."""
    lua = workdir / "post.lua"
    children: list[Child] = []
    for stack in stacks:
        print(f"measuring {stack} ...", file=sys.stderr, flush=True)
        child = await asyncio.to_thread(
            start_child, stack, idle_timeout_s, workdir / f"{stack}.log"
        )
        children.append(child)
        try:
            for name, path, conns, body in COLUMNS:
                child.cells[name] = await measured(
                    child, path, conns, duration, lua if body else None
                )
            child.cells[ATTACKED] = await under_attack(child, duration, idle_timeout_s)
        finally:
            stop_child(child)
    return children


def report(children: list[Child], args: argparse.Namespace) -> None:
    version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {version.stdout.splitlines()[0]}"
    )
    print(
        f"{args.duration:.0f} s per cell after 1 s warm-up; idle timeout {args.idle_timeout} s; "
        f"limits: body {BODY_LIMIT} B, {MAX_HEADERS} headers, {MAX_HEADER_BYTES} B per line"
    )
    titles = ("req/s", "p50 ms", "p99 ms", "errors", "CPU us/req", "slow closed")
    header = f"{'cell':24} {'stack':18} " + " ".join(f"{t:>11}" for t in titles)
    print(header)
    print("-" * len(header))
    for name in [*(c[0] for c in COLUMNS), ATTACKED]:
        for child in children:
            cell = child.cells[name]
            values = (
                f"{cell.rps:,.0f}",
                f"{cell.p50_ms:.2f}",
                f"{cell.p99_ms:.2f}",
                str(cell.errors),
                f"{cell.cpu_us:.0f}",
                cell.closed,
            )
            print(f"{name:24} {child.stack:18} " + " ".join(f"{v:>11}" for v in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--idle-timeout", type=int, default=5, help="idle/header timeout, s")
    parser.add_argument("--stacks", nargs="+", choices=STACKS, default=list(STACKS))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.fd, args.idle_timeout)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    workdir = Path(tempfile.mkdtemp(prefix="cgn-bench-gw-"))
    (workdir / "post.lua").write_text(POST_LUA)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            report(
                asyncio.run(measure(args.stacks, args.duration, args.idle_timeout, workdir)), args
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
