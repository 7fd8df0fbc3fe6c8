"""The stream writer: a sender cancelled mid-write never cuts the write (grpc.aio would cancel
the whole RPC, ending the stream for every other unit on it)."""

from __future__ import annotations

import asyncio

import grpc
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


async def test_messages_queued_in_one_turn_or_during_a_write_go_out_as_one_batch() -> None:
    release = asyncio.Event()
    writes: list[object] = []

    async def write(message: object) -> None:
        writes.append(message)
        if message == "first":
            await release.wait()

    writer = StreamWriter(write, batch=lambda messages: ("batch", tuple(messages)), max_batch=3)
    assert writer.post("first") is None
    await asyncio.sleep(0)  # "first" is being written
    for message in ("a", "b", "c", "d"):
        writer.post(message)
    last = asyncio.create_task(writer.send("e"))
    release.set()
    await last  # written once every message before it was
    assert writes == ["first", ("batch", ("a", "b", "c")), ("batch", ("d", "e"))]


async def test_without_a_batch_builder_each_message_is_its_own_write_in_order() -> None:
    writes: list[str] = []

    async def write(message: str) -> None:
        writes.append(message)

    writer = StreamWriter(write)
    for message in ("a", "b", "c"):
        writer.post(message)
    await writer.send("d")
    assert writes == ["a", "b", "c", "d"]


async def test_a_failed_write_fails_every_queued_and_later_message() -> None:
    gone = grpc.aio.UsageError("the stream ended")

    async def write(message: str) -> None:
        raise gone

    writer = StreamWriter(write)
    writer.post("posted")
    waiting = asyncio.create_task(writer.send("waiting"))
    with pytest.raises(grpc.aio.UsageError):
        await waiting
    assert writer.failed is gone
    assert writer.post("later") is gone
    assert await writer.send_quietly("later") is gone


async def test_a_writer_stopped_mid_write_fails_its_waiting_senders_instead_of_leaving_them() -> (
    None
):
    started = asyncio.Event()

    async def write(message: str) -> None:
        started.set()
        await asyncio.Event().wait()  # never finishes: the loop closes under it

    writer = StreamWriter(write)
    in_flight = asyncio.create_task(writer.send("in flight"))
    await started.wait()
    queued = asyncio.create_task(writer.send("queued"))
    await asyncio.sleep(0)
    assert writer._task is not None
    writer._task.cancel()
    for sender in (in_flight, queued):
        with pytest.raises(RuntimeError, match="writer was stopped"):
            await sender
