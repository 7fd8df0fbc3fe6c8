"""MediaGen's settings, read once at start from ``CGN_DSERVICE_MEDIAGEN_<NAME>`` variables.

The miner passes a DService only the variables named ``CGN_DSERVICE_<NAME>_*`` (and
``CGN_LISTEN``, where to serve), so every setting lives under that prefix. The sandbox sets
``CGN_DSERVICE_MEDIAGEN_ALLOW_LOOPBACK=1`` so that tests can serve scripts and images from
127.0.0.1; production leaves it off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from cgn_common.config import load_config, option

ENV_PREFIX = "CGN_DSERVICE_MEDIAGEN_"
MIB = 1024 * 1024


@dataclass(frozen=True)
class MediaGenConfig:
    """Every MediaGen setting with its default."""

    allow_loopback: bool = option(
        False, "Allow fetching from loopback addresses (127.0.0.0/8, ::1). Sandbox and tests only."
    )
    allow_private: bool = option(
        False,
        "Allow private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7). Link-local "
        "(169.254/16, fe80::/10, cloud metadata) is always refused.",
    )
    max_script_bytes: int = option(64 * 1024, "Largest script, inline or fetched (413 above).")
    max_fetch_bytes: int = option(32 * MIB, "Largest body one fetch may return (413 above).")
    max_fetches: int = option(16, "Most HTTP requests one MRL may make, redirects included.")
    max_image_pixels: int = option(
        25_000_000, "Largest image (width x height), checked from the header before decoding."
    )
    max_total_pixels: int = option(
        250_000_000, "Most pixels all operations of one run may produce together."
    )
    max_output_bytes: int = option(32 * MIB, "Largest saved image (413 above).")
    max_steps: int = option(1_000_000, "Most interpreter steps (statements + expressions).")
    max_string_chars: int = option(1_000_000, "Longest string a script may build.")
    max_array_items: int = option(100_000, "Longest array a script may build.")
    max_call_depth: int = option(64, "Deepest nesting of script function calls.")
    wall_time_ms: int = option(
        30_000, "Wall time of one MRL (fetches, script, encoding); the worker is killed past it."
    )
    fetch_timeout_ms: int = option(10_000, "Connect and per-read timeout of one fetch.")
    workers: int = option(0, "Worker processes running scripts; 0: one per CPU.")
    max_queue: int = option(64, "MRLs waiting for a worker before 503 answers.")
    worker_memory_bytes: int = option(
        2048 * MIB, "Address-space limit of each worker process (RLIMIT_AS); 0: none."
    )
    ca_file: str = option("", "Extra CA bundle for https fetches; empty: the system's.")
    log_level: str = option("INFO", "Log level.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MediaGenConfig:
        """Reads the ``CGN_DSERVICE_MEDIAGEN_*`` variables."""
        return load_config(
            cls, env_prefix=ENV_PREFIX, environ=os.environ if environ is None else environ
        )

    @property
    def worker_count(self) -> int:
        """How many worker processes to run."""
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)
