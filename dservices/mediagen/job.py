"""One MRL as a job, and running it: fetch the script, parse, bind the parameters, interpret,
then answer the image or PUT it to the output URL. Runs inside a worker process; every
failure becomes a :class:`JobResult` carrying a JSON error, never an exception."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from dservices.mediagen.config import MediaGenConfig
from dservices.mediagen.errors import (
    LimitExceededError,
    MediaGenError,
    NoOutputError,
    RequestError,
)
from dservices.mediagen.fetch import Fetcher, FetchLimits
from dservices.mediagen.interpreter import Interpreter, RunLimits
from dservices.mediagen.media import MediaContext, MediaLimits
from dservices.mediagen.parser import parse
from dservices.mediagen.policy import AddressPolicy, shown

JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Job:
    """An MRL, parsed: where the script comes from, its arguments, where the result goes."""

    script_url: str | None = None
    script_text: str | None = None
    base: str | None = None
    args: tuple[Any, ...] = ()
    named: dict[str, str] = field(default_factory=dict)
    output_url: str | None = None


@dataclass(frozen=True)
class JobResult:
    """The answer: status, body, Content-Type, and figures for the log."""

    status: int
    body: bytes
    content_type: str
    error_code: str = ""
    steps: int = 0
    fetches: int = 0

    @classmethod
    def error(cls, exc: MediaGenError, steps: int = 0, fetches: int = 0) -> JobResult:
        """The JSON error answer for ``exc``."""
        body = json.dumps(exc.to_json()).encode()
        return cls(exc.http_status, body, JSON_TYPE, exc.reason, steps, fetches)


def limits_of(config: MediaGenConfig) -> tuple[MediaLimits, RunLimits]:
    """The media and interpreter limits a config sets."""
    media = MediaLimits(
        max_image_pixels=config.max_image_pixels,
        max_total_pixels=config.max_total_pixels,
        max_output_bytes=config.max_output_bytes,
    )
    run = RunLimits(
        max_steps=config.max_steps,
        wall_time_s=config.wall_time_ms / 1000,
        max_string_chars=config.max_string_chars,
        max_array_items=config.max_array_items,
        max_call_depth=config.max_call_depth,
    )
    return media, run


def run_job(job: Job, config: MediaGenConfig) -> JobResult:
    """Runs one MRL to completion; every outcome is a :class:`JobResult`."""
    deadline = time.monotonic() + config.wall_time_ms / 1000
    policy = AddressPolicy(config.allow_loopback, config.allow_private)
    fetcher = Fetcher(
        policy,
        FetchLimits(config.max_fetches, config.fetch_timeout_ms / 1000, deadline),
        config.ca_file,
    )
    media_limits, run_limits = limits_of(config)
    interpreter: Interpreter | None = None
    try:
        program = parse(_script_text(job, fetcher, config))
        base = job.base or job.script_url

        def fetch(name: str) -> bytes:
            return fetcher.get(_resolve(name, base), config.max_fetch_bytes, "load")

        context = MediaContext(media_limits, fetch, lambda: None)
        interpreter = Interpreter(program, context, run_limits, deadline)
        interpreter.run(job.args, job.named)
        output = context.output
        if output is None:
            raise NoOutputError("the script saved nothing: call save() on a Media")
        if job.output_url is None:
            return JobResult(
                200, output.data, output.content_type, "", interpreter.steps, fetcher.count
            )
        status = fetcher.put(job.output_url, output.data, output.content_type)
        receipt = {
            "output": shown(job.output_url),
            "status": status,
            "content_type": output.content_type,
            "bytes": len(output.data),
            "sha256": hashlib.sha256(output.data).hexdigest(),
        }
        body = json.dumps(receipt).encode()
        return JobResult(200, body, JSON_TYPE, "", interpreter.steps, fetcher.count)
    except MediaGenError as exc:
        steps = interpreter.steps if interpreter else 0
        return JobResult.error(exc, steps, fetcher.count)
    except MemoryError:
        memory = LimitExceededError(
            "the script needed more memory than a worker may use",
            limit="worker_memory_bytes",
            value=config.worker_memory_bytes,
        )
        return JobResult.error(memory, interpreter.steps if interpreter else 0, fetcher.count)


def _script_text(job: Job, fetcher: Fetcher, config: MediaGenConfig) -> str:
    if job.script_text is not None:
        raw = job.script_text.encode()
    elif job.script_url is not None:
        raw = fetcher.get(job.script_url, config.max_script_bytes, "script")
    else:
        raise RequestError("no script: give script=<URL>, script_text=<text> or a request body")
    if len(raw) > config.max_script_bytes:
        raise LimitExceededError(
            f"the script is {len(raw)} bytes, over the limit of {config.max_script_bytes}",
            limit="max_script_bytes",
            value=config.max_script_bytes,
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("the script is not UTF-8 text") from None


def _resolve(name: str, base: str | None) -> str:
    """``load``'s name: absolute as is, relative against the script's URL (or ``base``)."""
    if urlsplit(name).scheme:
        return name
    if base is None:
        raise RequestError(
            f"load(): {name!r} is a relative name, and an inline script has no URL to resolve "
            "it against; add base=<URL> to the MRL"
        )
    return urljoin(base, name)
