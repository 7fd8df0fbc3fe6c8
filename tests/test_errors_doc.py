"""docs/errors.md lists every ErrorInfo reason the code gives."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cgn_common", "cgn_node", "central", "gateway", "miner", "settlement")


def test_every_reason_in_the_code_is_in_the_table() -> None:
    used: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            used |= set(re.findall(r'reason ?= ?"([A-Z_]+)"', path.read_text()))
    table = (ROOT / "docs" / "errors.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE))
    assert used, "the scan found no reasons"
    assert used <= documented, sorted(used - documented)
