"""Miners killed in the middle of a large body (SPEC 15): before the first answer byte left
the node, the unit is re-dispatched with its body from the node's spool; after it, the
DApp's client sees an incomplete answer, never a complete-looking one."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from cgn_common.ids import new_id
from tests.helpers import journal
from tests.helpers.sandbox import RunningSandbox, start_sandbox, stop_sandbox
from tests.test_chaos import _connected_miners

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningSandbox, Path]]:
    """A sandbox of two miners whose echo journals every run (the shared one must keep its
    miners)."""
    base = tmp_path_factory.mktemp("data-plane-faults")
    directory = base / "journal"
    directory.mkdir()
    sb = start_sandbox(
        base / "state",
        base / "sandbox.log",
        miners=2,
        dservices="echo",
        env={"CGN_DSERVICE_ECHO_JOURNAL": str(directory)},
    )
    try:
        yield sb, directory
    finally:
        stop_sandbox(sb.process)


async def _both_miners(sb: RunningSandbox) -> None:
    """Waits (bounded) until both miners are connected: a killed one is restarted."""
    deadline = time.monotonic() + 60
    while await _connected_miners(sb) < 2:
        assert time.monotonic() < deadline, "the killed miner did not come back"
        await asyncio.sleep(0.1)


async def _started_on(directory: Path, request_id: str, attempt: int) -> int:
    """The pid of the miner whose DService began run ``attempt`` of ``request_id``."""
    deadline = time.monotonic() + 60
    while True:
        runs = journal.by_request(directory, "start").get(request_id, [])
        for run in runs:
            if int(run["attempt"]) == attempt:
                return int(run["miner_pid"])
        assert time.monotonic() < deadline, f"{request_id} attempt {attempt} never started"
        await asyncio.sleep(0.02)


async def test_a_miner_killed_mid_upload_is_replaced_and_the_body_resent_from_the_spool(
    faulty: tuple[RunningSandbox, Path],
) -> None:
    sb, directory = faulty
    await _both_miners(sb)
    size = 512 * MIB
    seed = os.urandom(MIB)
    expected = hashlib.sha256()
    for n in range(size // MIB):
        expected.update(seed[n:] + seed[:n])

    async def body() -> AsyncIterator[bytes]:
        for n in range(size // MIB):
            yield seed[n:] + seed[:n]

    request_id = new_id("upload")
    token = await sb.session_token()
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Request-Id": request_id,
        "X-Echo-Digest": "sha256",
        # The DService holds 1 s before it reads: the body is then mid-way, held up by
        # flow control between the node's spool, the miner and the DService.
        "X-Echo-Hold-Ms": "1000",
        "Content-Length": str(size),
    }
    async with aiohttp.ClientSession() as http:

        async def upload() -> tuple[int, dict[str, object]]:
            async with http.post(
                f"{sb.url}/v1/dservices/echo/digest", data=body(), headers=headers
            ) as answer:
                return answer.status, await answer.json()

        sent = asyncio.create_task(upload())
        # The DService starts only once the node has the whole body (spooled) and a miner
        # is fetching it: kill that miner while the body is on its way.
        victim = await _started_on(directory, request_id, 1)
        assert not sent.done()
        os.kill(victim, signal.SIGKILL)
        status, answer = await asyncio.wait_for(sent, 120)
    assert status == 200, answer
    assert answer == {"sha256": expected.hexdigest(), "size": size}
    # It ran twice: first on the killed miner, then, from the spool, on the other one.
    runs = sorted(
        journal.by_request(directory, "start")[request_id], key=lambda r: int(r["attempt"])
    )
    assert [int(r["attempt"]) for r in runs] == [1, 2], runs
    assert runs[0]["miner_pid"] == victim != runs[1]["miner_pid"]


@pytest.mark.parametrize("sized", [False, True], ids=["chunked", "content-length"])
async def test_a_miner_killed_mid_download_leaves_the_dapps_client_an_incomplete_answer(
    faulty: tuple[RunningSandbox, Path], tmp_path: Path, sized: bool
) -> None:
    sb, directory = faulty
    await _both_miners(sb)
    size = 1024 * MIB
    request_id = new_id("download")
    token = await sb.session_token()
    out = tmp_path / "download"
    # curl, a stock client: exit 18 ("partial file") is how it says an answer was cut.
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--output",
        str(out),
        "--write-out",
        "%{http_code}",
        "-H",
        f"Authorization: Bearer {token}",
        "-H",
        f"X-Request-Id: {request_id}",
        "-H",
        f"X-Echo-Generate-Bytes: {size}",
        "-H",
        f"X-Echo-Generate-Sized: {int(sized)}",
        f"{sb.url}/v1/dservices/echo/download",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        victim = await _started_on(directory, request_id, 1)
        deadline = time.monotonic() + 60
        while not out.exists() or out.stat().st_size < 32 * MIB:
            assert time.monotonic() < deadline, "the download stalled"
            assert curl.returncode is None, "curl ended before the miner was killed"
            await asyncio.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = await asyncio.wait_for(curl.communicate(), 60)
    finally:
        if curl.returncode is None:
            curl.kill()
            await curl.wait()
    assert stdout == b"200"  # the head had gone out: the status cannot change any more
    assert curl.returncode == 18, (curl.returncode, stderr)
    assert out.stat().st_size < size
    # Never re-dispatched: the DApp already had part of the answer (SPEC 15).
    runs = journal.by_request(directory, "start")[request_id]
    assert len(runs) == 1, runs
