"""Structured logging: one JSON object per line on stderr.

Call ``get_logger(__name__).info("event_name", extra_field=value)``-style through
:func:`log_event`; values that are :class:`~cgn_common.config.Secret` print masked.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its structured fields."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self._process = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": self._process,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(process_name: str, level: str = "INFO") -> None:
    """Sends every log record to stderr as JSON; call once at process start."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_event(
    logger: logging.Logger,
    event: str,
    level: int = logging.INFO,
    *,
    exc: BaseException | None = None,
    **fields: Any,
) -> None:
    """Logs ``event`` with structured ``fields`` (and ``exc``'s traceback when given)."""
    safe = {f"{k}_" if k in _RESERVED else k: v for k, v in fields.items()}
    logger.log(level, event, extra=safe, exc_info=exc)
