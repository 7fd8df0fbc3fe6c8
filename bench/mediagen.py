"""Benchmark MediaGen: images per second for one pipeline, three ways, in one run.

Usage (from the repository root)::

    .venv/bin/python bench/mediagen.py
    .venv/bin/python bench/mediagen.py --duration 10 --connections 4

The pipeline, on a 1000 x 1000 (1-megapixel) JPEG: load -> resize to 800 wide -> rotate 10
degrees clockwise -> annotate -> save as JPEG (quality 85). It runs:

* ``Pillow direct``: the same Pillow calls in a loop in this process (one core), the baseline;
* ``mediagen direct``: ``python -m dservices.mediagen`` on a free loopback port, called over
  HTTP with the MRL ``/mgen/io?script=<URL>&source=<URL>`` (its workers: one per CPU);
* ``through CGN``: a complete sandbox (``python -m cgn_cli sandbox``: Central, a node, 2
  miners each running mediagen, the gateway), called at ``/v1/dservices/mediagen/mgen/io``
  with a session token.

The script and the image are served by ``python -m http.server`` on loopback. Load comes from
``wrk`` (installed with apt-get when missing), a native client that costs a fraction of a core,
so that the 2 cores of this machine go to the server side. Before measuring, one MRL's answer
is checked to be byte-for-byte the JPEG Pillow direct makes. The table shows images/s, the
ratio to Pillow direct, wrk's latency percentiles, errors (non-2xx answers and socket errors)
and the server side's CPU per image (every process of the DService or of the sandbox).

Every child is stopped by PID at the end, even on error. Numbers move by 10-20% between runs
on a shared 2-core machine; compare runs, not digits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from _common import cpu_seconds
from PIL import Image, ImageDraw, ImageFont

from cgn_common.process import dies_with_this_process

HOST = "127.0.0.1"
SIZE = (1000, 1000)
WIDTH = 800
ANGLE = 10
TEXT = "CGN bench"
START_TIMEOUT_S = 60.0
POLL_S = 0.05
SCRIPT = f"""function main(source) {{
    var image = new Media();
    image.load(name @ source);
    image.resize(width @ {WIDTH});
    image.rotate(angle @ {ANGLE});
    image.annotate(text @ "{TEXT}", x @ 20, y @ 20, size @ 32, color @ "#ffffff");
    image.save(type @ "jpeg", quality @ 85);
}}
"""


@dataclass
class Row:
    """One line of the table."""

    name: str
    images_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    cpu_ms_per_image: float | None = None


def make_source() -> bytes:
    """A 1-megapixel JPEG with gradients (so encoders have real work)."""
    width, height = SIZE
    gradient = Image.linear_gradient("L").resize(SIZE)
    image = Image.merge(
        "RGB", (gradient, gradient.rotate(90), gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    ImageDraw.Draw(image).ellipse((200, 200, width - 200, height - 200), fill="#c03030")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def pillow_pipeline(data: bytes) -> bytes:
    """The pipeline in Pillow, the same calls mediagen makes."""
    loaded = Image.open(io.BytesIO(data))
    loaded.load()
    image = loaded.resize(
        (WIDTH, round(loaded.height * WIDTH / loaded.width)), Image.Resampling.LANCZOS
    )
    image = image.rotate(
        -ANGLE, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255)
    )
    ImageDraw.Draw(image).text((20, 20), TEXT, fill="#ffffff", font=ImageFont.load_default(size=32))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def run_pillow(data: bytes, duration_s: float) -> Row:
    pillow_pipeline(data)  # warm-up (font, codecs)
    count, cpu0, start = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - start < duration_s:
        pillow_pipeline(data)
        count += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return Row("Pillow direct (1 process)", count / elapsed, cpu_ms_per_image=cpu * 1000 / count)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds used so far by ``roots`` and all their live descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                parents[int(entry.name)] = int(fields[1])
    pids, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in pids:
                pids.add(pid)
                frontier.append(pid)
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            total += cpu_seconds(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split())
    return total


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: apt-get install -y wrk", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL
    )
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk could not be installed")
    return found


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


async def run_wrk(
    wrk: str,
    name: str,
    url: str,
    headers: dict[str, str],
    args: argparse.Namespace,
    server_pids: list[int],
) -> Row:
    """wrk for ``--duration`` seconds (after a 2 s warm-up), parsed into a Row."""
    command = [wrk, "-t1", f"-c{args.connections}", "--latency", "--timeout", "30s"]
    for key, value in headers.items():
        command += ["-H", f"{key}: {value}"]
    warm = await asyncio.create_subprocess_exec(
        *command, "-d2s", url, stdout=asyncio.subprocess.DEVNULL
    )
    await warm.wait()
    cpu0 = tree_cpu_seconds(server_pids)
    proc = await asyncio.create_subprocess_exec(
        *command, f"-d{args.duration}s", url, stdout=asyncio.subprocess.PIPE
    )
    out = (await proc.communicate())[0].decode()
    cpu = tree_cpu_seconds(server_pids) - cpu0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    p50 = re.search(r"^\s*50%\s+([\d.]+\w+)", out, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+([\d.]+\w+)", out, re.MULTILINE)
    return Row(
        name,
        rps,
        _ms(p50.group(1)) if p50 else None,
        _ms(p99.group(1)) if p99 else None,
        errors,
        cpu * 1000 / total if total else None,
    )


async def wait_listening(port: int, process: asyncio.subprocess.Process, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(POLL_S)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"{name} did not listen within {START_TIMEOUT_S} s")


async def wait_sandbox(process: asyncio.subprocess.Process, path: Path) -> dict[str, Any]:
    """Polls for sandbox.json, written once the whole sandbox serves (bounded)."""
    deadline = time.monotonic() + START_TIMEOUT_S * 2
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"the sandbox exited with {process.returncode}")
        with contextlib.suppress(OSError, json.JSONDecodeError):
            info: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_text))
            return info
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"no {path} after {START_TIMEOUT_S * 2} s")


async def spawn(
    args: list[str], env: dict[str, str], cwd: Path, log: Path
) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env={**os.environ, **env},
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=dies_with_this_process(),
        )


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def check_answer(url: str, headers: dict[str, str], expected: bytes) -> None:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        kind = response.headers.get("Content-Type")
    if kind != "image/jpeg" or body != expected:
        raise RuntimeError(f"{url}: answered {kind}, {len(body)} bytes, not Pillow's JPEG")


async def bench(args: argparse.Namespace, work: Path) -> list[Row]:
    wrk = ensure_wrk()
    source = make_source()
    expected = pillow_pipeline(source)
    files = work / "files"
    files.mkdir()
    (files / "source.jpg").write_bytes(source)
    (files / "pipeline.ms").write_text(SCRIPT)
    rows = [run_pillow(source, args.duration)]

    file_port = free_port()
    file_server = await spawn(
        ["-m", "http.server", str(file_port), "--bind", HOST], {}, files, work / "files.log"
    )
    children = [file_server]
    try:
        await wait_listening(file_port, file_server, "file server")
        base = f"http://{HOST}:{file_port}"
        query = urlencode({"script": f"{base}/pipeline.ms", "source": f"{base}/source.jpg"})

        port = free_port()
        mediagen = await spawn(
            ["-m", "dservices.mediagen"],
            {
                "CGN_LISTEN": f"{HOST}:{port}",
                "CGN_DSERVICE_MEDIAGEN_ALLOW_LOOPBACK": "1",
                "CGN_DSERVICE_MEDIAGEN_LOG_LEVEL": "WARNING",
            },
            work,
            work / "mediagen.log",
        )
        children.append(mediagen)
        await wait_listening(port, mediagen, "mediagen")
        url = f"http://{HOST}:{port}/mgen/io?{query}"
        await asyncio.to_thread(check_answer, url, {}, expected)
        rows.append(await run_wrk(wrk, "mediagen direct (HTTP)", url, {}, args, [mediagen.pid]))
        await stop(mediagen)

        # The sandbox as README runs it, in its own process tree (Central, node, miners with
        # their mediagen DServices and workers, gateway).
        state = work / "sandbox"
        sandbox = await spawn(
            ["-m", "cgn_cli", "sandbox", "--state-dir", str(state)], {}, work, work / "sandbox.log"
        )
        children.append(sandbox)
        info = await wait_sandbox(sandbox, state / "sandbox.json")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{info['gateway_url']}/v1/sessions",
                json={"account_id": info["account_id"], "api_key": info["api_key"]},
            ) as response,
        ):
            token = (await response.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{info['gateway_url']}/v1/dservices/mediagen/mgen/io?{query}"
        await asyncio.to_thread(check_answer, url, headers, expected)
        rows.append(await run_wrk(wrk, "through CGN (sandbox)", url, headers, args, [sandbox.pid]))
    finally:
        for child in children:
            await stop(child)
    return rows


def table(rows: list[Row], args: argparse.Namespace) -> str:
    base = rows[0].images_per_s

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"MediaGen: load -> resize {WIDTH} wide -> rotate {ANGLE} -> annotate -> JPEG q85, "
        f"{SIZE[0]}x{SIZE[1]} source; wrk -c{args.connections}, {args.duration} s; "
        f"{os.cpu_count()} CPUs",
        f"{'path':<28} {'images/s':>9} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'CPU ms/image':>13}",
    ]
    for row in rows:
        lines.append(
            f"{row.name:<28} {row.images_per_s:>9.1f} {row.images_per_s / base:>6.2f}x "
            f"{ms(row.p50_ms):>8} {ms(row.p99_ms):>8} {row.errors:>7} "
            f"{ms(row.cpu_ms_per_image):>13}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections")
    parser.add_argument("--keep-state", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cgn-bench-mediagen-"))
    try:
        rows = asyncio.run(bench(args, work))
        print(table(rows, args), flush=True)
    finally:
        if args.keep_state:
            print(f"state and logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
