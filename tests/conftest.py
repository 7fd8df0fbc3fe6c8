"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import cgn_cli  # noqa: F401  - sets GRPC_ENABLE_FORK_SUPPORT before grpc loads (see there)
from tests.helpers.sandbox import RunningSandbox, start_sandbox, stop_sandbox


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    """One sandbox shared by the tests that only send requests to it."""
    base: Path = tmp_path_factory.mktemp("shared-sandbox")
    journal = base / "journal"
    journal.mkdir()
    running = start_sandbox(
        base / "state",
        base / "sandbox.log",
        env={"CGN_DSERVICE_ECHO_JOURNAL": str(journal)},
    )
    try:
        yield running
    finally:
        stop_sandbox(running.process)
