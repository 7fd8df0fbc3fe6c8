"""The miner announces its DServices' body limits and refuses, before fetching it, a body
over one (the node checks first; this holds whatever node sent the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cgn_common.config import Secret
from cgn_common.descriptor import parse_descriptor
from cgn_common.errors import BodyTooLargeError
from cgn_common.status import reason_of
from cgn_common.streams import StreamWriter
from generated.cgn.common.v1 import http_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from miner._link import LinkSession, _check_body_size
from miner.config import MinerConfig
from miner.fitness import FitnessResult
from miner.runtime import ProcessRuntime, Spent

DESCRIPTOR = """
name = "small"
version = "1.0.0"
[process]
command = ["python3", "-c", "pass"]
[limits]
max_body_bytes = 10
"""


class _Call:
    """The control stream, as far as a failing unit writes to it."""

    def __init__(self) -> None:
        self.sent: list[pb.ConnectRequest] = []

    async def write(self, message: pb.ConnectRequest) -> None:
        self.sent.append(message)


def _session(tmp_path: Path) -> LinkSession:
    runtime = ProcessRuntime(
        names=["echo"], descriptors=[parse_descriptor(DESCRIPTOR, "d", tmp_path)]
    )
    config = MinerConfig(miner_id="m1", miner_key=Secret("k"))
    return LinkSession(config, runtime, FitnessResult(1, 1, 1, 1))


def _assignment(size: int, *, inline: bool) -> pb.WorkAssignment:
    assignment = pb.WorkAssignment(
        dispatch_token="t1",
        dservice="small",
        head=http_pb2.HttpRequestHead(method="POST", path="/"),
        body_size=size,
        body_complete=inline,
    )
    if inline:
        assignment.body = b"x" * size
    return assignment


def test_the_hello_offers_each_dservices_body_limit(tmp_path: Path) -> None:
    offers = {o.name: o.max_body_bytes for o in _session(tmp_path)._hello().dservices}
    assert offers == {"echo": 0, "small": 10}


def test_a_body_of_the_limit_passes_and_one_over_it_does_not() -> None:
    for inline in (True, False):
        _check_body_size(_assignment(10, inline=inline), 10)
        _check_body_size(_assignment(11, inline=inline), 0)  # no limit
        with pytest.raises(BodyTooLargeError, match="11 bytes, over the limit of DService"):
            _check_body_size(_assignment(11, inline=inline), 10)


async def test_a_unit_over_the_limit_fails_before_its_body_is_fetched(tmp_path: Path) -> None:
    session = _session(tmp_path)
    call = _Call()
    session._writer = StreamWriter(call.write)
    exchange: list[Any] = []
    # Not inline: the body would come on a data plane, which is never opened (the session
    # has no stub; opening one would fail the test).
    await session._run_unit("n1", _assignment(11, inline=False), Spent(), exchange)
    await session._writer.flush()
    assert exchange == []
    (sent,) = call.sent
    status = sent.failure.status
    assert sent.failure.dispatch_token == "t1"
    assert status.code == 8  # RESOURCE_EXHAUSTED
    assert reason_of(status) == "BODY_TOO_LARGE"
    assert "11 bytes, over the limit of DService 'small' of 10 bytes" in status.message
