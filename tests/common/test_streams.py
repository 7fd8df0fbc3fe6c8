"""The stream writer: a sender cancelled mid-write never cuts the write (grpc.aio would cancel
the whole RPC, ending the stream for every other unit on it)."""

from __future__ import annotations

import asyncio

import pytest

from cgn_common.streams import StreamWriter


async def test_a_cancelled_sender_lets_its_write_finish_and_the_next_one_waits() -> None:
    release = asyncio.Event()
    written: list[str] = []
    interrupted: list[str] = []

    async def write(message: str) -> None:
        try:
            if message == "slow":
                await release.wait()
            written.append(message)
        except asyncio.CancelledError:
            interrupted.append(message)
            raise

    writer = StreamWriter(write)
    sender = asyncio.create_task(writer.send("slow"))
    await asyncio.sleep(0)  # the write has started
    sender.cancel()
    follower = asyncio.create_task(writer.send("next"))
    await asyncio.sleep(0)
    assert written == []  # the next write waits for the one in progress
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await sender
    await follower
    assert written == ["slow", "next"]
    assert interrupted == []
