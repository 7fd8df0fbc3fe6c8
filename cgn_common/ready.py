"""Ready files: how a child process tells its parent which ports it bound.

A process started with ``--ready-file PATH`` writes a JSON object there, atomically, once
it serves: ``{"pid": ..., "endpoints": {"name": "host:port", ...}, ...}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def write_ready_file(path: Path | None, endpoints: dict[str, str], **extra: Any) -> None:
    """Announces that this process serves on ``endpoints``."""
    if path is not None:
        write_json_atomic(path, {"pid": os.getpid(), "endpoints": endpoints, **extra})
