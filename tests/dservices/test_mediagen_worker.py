"""Jobs and the worker pool, in process: limits answered as JSON errors, one slow MRL not
blocking another, and the wall-time limit killing a worker stuck in one long Pillow call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dservices.mediagen.config import MediaGenConfig
from dservices.mediagen.job import Job, JobResult, run_job
from dservices.mediagen.worker import WorkerPool
from tests.dservices.images import decode

CONFIG = MediaGenConfig(allow_loopback=True, workers=2)


def error_of(result: JobResult) -> dict[str, Any]:
    assert result.content_type == "application/json"
    error: dict[str, Any] = json.loads(result.body)["error"]
    return error


def inline(text: str, **config: Any) -> JobResult:
    return run_job(Job(script_text=text), dataclasses.replace(CONFIG, **config))


def test_inline_canvas_round_trip() -> None:
    result = inline(
        'var m = new Media(width @ 4, height @ 3, color @ "#ff0000"); m.save(type @ "png");'
    )
    assert (result.status, result.content_type) == (200, "image/png")
    image = decode(result.body)
    assert (image.size, image.getpixel((0, 0))) == ((4, 3), (255, 0, 0))


@pytest.mark.parametrize(
    ("text", "config", "status", "code", "limit"),
    [
        ("var m = new Media(width @ 10, height @ 10);", {}, 400, "no_output", None),
        (
            'var m = new Media(width @ 300, height @ 300); m.save(type @ "png");',
            {"max_output_bytes": 100},
            413,
            "limit_exceeded",
            "max_output_bytes",
        ),
        (
            "var m = new Media(width @ 100, height @ 100); while (true) { m.flip(); }",
            {"max_total_pixels": 100_000},
            413,
            "limit_exceeded",
            "max_total_pixels",
        ),
        (
            "var m = new Media(width @ 200, height @ 200);",
            {"max_image_pixels": 10_000},
            413,
            "limit_exceeded",
            "max_image_pixels",
        ),
        ("x" * 70_000, {}, 413, "limit_exceeded", "max_script_bytes"),
        ('var m = new Media(); m.load(name @ "car.tif");', {}, 400, "bad_request", None),
        (
            'var m = new Media(); m.load(name @ "file:///etc/passwd");',
            {},
            400,
            "unsupported_scheme",
            None,
        ),
    ],
)
def test_job_errors(
    text: str, config: dict[str, Any], status: int, code: str, limit: str | None
) -> None:
    result = inline(text, **config)
    error = error_of(result)
    assert (result.status, error["code"]) == (status, code), error
    assert error.get("limit") == limit


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    config = dataclasses.replace(
        CONFIG, wall_time_ms=1500, max_image_pixels=200_000_000, max_total_pixels=10**12
    )
    workers = WorkerPool(config, size=2)
    await workers.start()
    try:
        yield workers
    finally:
        await workers.stop()


QUICK = Job(script_text='var m = new Media(width @ 8, height @ 8); m.save(type @ "png");')
#: Many Pillow calls, each short: the interpreter's own deadline check answers.
SLOW_LOOP = Job(
    script_text="var m = new Media(width @ 1500, height @ 1500);"
    " while (true) { m.rotate(angle @ 1, expand @ false); }"
)
#: One Pillow call far longer than the limit (a bicubic rotation of 144 Mpx: about 6.5 s here,
#: twice the 3.5 s at which the worker is killed; a Lanczos resize took 3.3-4.3 s and, on an
#: idle machine, sometimes ended before the kill): only killing the worker stops it. Making
#: the canvas takes about 0.25 s, well inside the 2.5 s limit even on a loaded machine.
ONE_LONG_CALL = Job(
    script_text="var m = new Media(width @ 12000, height @ 12000);"
    ' m.rotate(angle @ 33, filter @ "bicubic", expand @ false);'
)


async def test_a_slow_mrl_does_not_block_a_quick_one(pool: WorkerPool) -> None:
    slow = asyncio.create_task(pool.run(SLOW_LOOP))
    quick = await pool.run(QUICK)
    assert quick.status == 200
    assert not slow.done()
    result = await slow
    assert (result.status, error_of(result)["limit"]) == (422, "wall_time_ms")
    assert pool.replaced == 0  # the worker answered on its own and was kept


async def test_wall_time_kills_a_worker_stuck_in_pillow() -> None:
    config = dataclasses.replace(
        CONFIG, wall_time_ms=2500, max_image_pixels=200_000_000, max_total_pixels=10**12
    )
    pool = WorkerPool(config, size=2)
    await pool.start()
    try:
        await _kill_and_replace(pool)
    finally:
        await pool.stop()


async def _kill_and_replace(pool: WorkerPool) -> None:
    result = await pool.run(ONE_LONG_CALL)
    assert (result.status, error_of(result)["limit"]) == (422, "wall_time_ms")
    assert pool.replaced == 1
    for _ in range(3):  # the replacement serves, and so does the other worker
        assert (await pool.run(QUICK)).status == 200


def test_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    from dservices.mediagen.errors import LimitExceededError
    from dservices.mediagen.media import MediaContext, MediaLimits
    from dservices.mediagen.media import decode as decode_media
    from tests.dservices.images import encode, png_bomb, source

    context = MediaContext(MediaLimits(10_000, 10**9, 10**9), lambda _: b"", lambda: None)
    with pytest.raises(LimitExceededError, match=r"\(200 x 150\)"):
        decode_media(encode(source(200, 150), "PNG"), context)
    assert context.pixels_used == 0  # refused before anything was decoded or charged
    with pytest.raises(LimitExceededError, match="refused before decoding"):
        decode_media(png_bomb(), context)
