"""Reading the echo DService's journal (``CGN_DSERVICE_ECHO_JOURNAL``): what ran where."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def entries(directory: Path) -> list[dict[str, Any]]:
    """Every journal line of every echo process."""
    found: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                found.append(json.loads(line))
    return found


def by_request(directory: Path, event: str) -> dict[str, list[dict[str, Any]]]:
    """request id -> the journal lines of ``event`` for it."""
    result: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries(directory):
        if entry["event"] == event:
            result[entry["request_id"]].append(entry)
    return result
