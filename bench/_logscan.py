"""Scanning a sandbox's logs for warnings, errors and odd lines after a benchmark."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

LOG_LEVELS = ("warning", "error", "critical")
GLOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (.*)$")


def odd_text_line(line: str, strict: bool) -> str:
    """How a non-JSON log line is reported ('' to skip it).

    A process log should hold JSON only (`strict`); the sandbox's own output also holds its
    banner, so there only gRPC core (glog-style) lines and Python errors count.
    """
    text = line.strip()
    glog = GLOG_LINE.match(text)
    if glog:
        return f"gRPC core {glog.group(1)}: {glog.group(2)[:90]}"
    if strict or any(word in text for word in ("Traceback", "Error", "Exception", "Warning")):
        return f"non-JSON: {text[:100]}" if text else ""
    return ""


def scan_log(path: Path, strict: bool) -> Counter[str]:
    """Warning/error events (JSON log lines) and odd non-JSON lines of one log, counted."""
    found: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            odd = odd_text_line(line, strict)
            if odd:
                found[odd] += 1
            continue
        if not isinstance(entry, dict):
            continue
        level = str(entry.get("level", "")).lower()
        if level in LOG_LEVELS:
            detail = entry.get("error") or entry.get("message") or ""
            found[f"{level}: {entry.get('event')} {str(detail)[:80]}".strip()] += 1
    return found


def scan_logs(process_logs: Sequence[Path], sandbox_output: Path) -> list[str]:
    """Log sizes, then one line per distinct warning/error/odd line found, with counts."""
    sizes = ", ".join(
        f"{p.name} {p.stat().st_size / 1024:,.0f} KiB/{len(p.read_bytes().splitlines()):,} lines"
        for p in process_logs
    )
    lines = [f"sandbox log volume: {sizes}"]
    for path in [*process_logs, sandbox_output]:
        if path.is_file():
            for what, count in scan_log(path, path != sandbox_output).most_common(8):
                lines.append(f"  {path.name}: {what} (x{count})")
    return lines
