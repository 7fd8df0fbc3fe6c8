"""The supervisor: a failing loop is logged with its traceback and restarted, or fails the
process when declared fatal; a failing one-shot task is logged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cgn_common.tasks import Supervisor
from tests.helpers.wait import until


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def test_a_failing_loop_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor("test")
    runs: list[int] = []

    async def body() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"injected failure {len(runs)}")
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR):
        supervisor.loop("flaky", body, sleep=_no_sleep)
        await until(lambda: len(runs) == 3, "the third run")
    failures = [r for r in caplog.records if r.getMessage() == "loop_failed"]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)
    assert supervisor.restarts["flaky"] == 2
    assert not supervisor.fatal.done()
    await supervisor.close()


async def test_a_fatal_loop_resolves_fatal() -> None:
    supervisor = Supervisor("test")

    async def body() -> None:
        raise OSError("injected: cannot go on")

    supervisor.loop("vital", body, fatal=True)
    error = await asyncio.wait_for(supervisor.fatal, 5)
    assert isinstance(error, OSError)
    await supervisor.close()


async def test_a_failing_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor("test")

    async def task() -> None:
        raise ValueError("injected")

    with caplog.at_level(logging.ERROR):
        spawned = supervisor.spawn("one-shot", task())
        await asyncio.wait({spawned})
        await until(lambda: any(r.getMessage() == "task_failed" for r in caplog.records), "log")
    record = next(r for r in caplog.records if r.getMessage() == "task_failed")
    assert record.exc_info is not None
    await supervisor.close()
