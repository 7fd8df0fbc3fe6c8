"""An MRL request -> a :class:`~dservices.mediagen.job.Job`.

``GET|POST /mgen/io`` with these reserved query parameters (every other parameter is a named
argument of the script's ``main``):

- ``script``: the MediaScript's URL; or ``script_text``: the script itself; or a POST body;
- ``args``: positional arguments, comma-separated: ``"double-quoted strings"``, numbers,
  ``true``/``false``;
- ``base``: the URL relative names in an inline script resolve against;
- ``output``: a URL to PUT the result to (the answer is then a JSON receipt).
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from dservices.mediagen.config import MediaGenConfig
from dservices.mediagen.errors import LimitExceededError, RequestError
from dservices.mediagen.job import Job
from dservices.mediagen.policy import check_url

RESERVED = frozenset({"script", "script_text", "args", "base", "output"})
_ARGS_HELP = 'args must be a comma-separated list of "double-quoted strings", numbers, true, false'


def parse_args(raw: str) -> tuple[Any, ...]:
    """``"a.jpg",128,true`` -> ("a.jpg", 128.0, True); numbers are floats, as in scripts."""
    if not raw.strip():
        return ()

    def refuse(constant: str) -> Any:
        raise RequestError(f"{_ARGS_HELP} ({constant} is not a number)")

    try:
        values = json.loads(f"[{raw}]", parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise RequestError(f"{_ARGS_HELP}; column {exc.colno - 1}: {exc.msg}") from None
    out: list[Any] = []
    for value in values:
        if isinstance(value, bool | str):
            out.append(value)
        elif isinstance(value, int | float):
            number = float(value)
            if not math.isfinite(number):
                raise RequestError(f"{_ARGS_HELP} (a number is too large)")
            out.append(number)
        else:
            raise RequestError(_ARGS_HELP)
    return tuple(out)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise _script_too_big(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _script_too_big(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _script_too_big(limit: int) -> LimitExceededError:
    return LimitExceededError(
        f"the script is larger than {limit} bytes", limit="max_script_bytes", value=limit
    )


async def job_from_request(request: web.Request, config: MediaGenConfig) -> Job:
    """Validates the MRL and builds its Job (the script itself is parsed by the worker)."""
    query = request.rel_url.query
    for key in set(query.keys()):
        if len(query.getall(key)) > 1:
            raise RequestError(f"parameter {key!r} is given more than once")
    body = await read_body(request, config.max_script_bytes)
    sources = [n for n in ("script", "script_text") if n in query] + (["body"] if body else [])
    if len(sources) != 1:
        raise RequestError(
            "give exactly one script: script=<URL>, script_text=<text> or a POST body"
            + (f" (got {', '.join(sources)})" if sources else "")
        )
    script_url = query.get("script")
    script_text = query.get("script_text")
    if body:
        try:
            script_text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("the script in the body is not UTF-8 text") from None
    if script_text is not None and len(script_text.encode()) > config.max_script_bytes:
        raise _script_too_big(config.max_script_bytes)
    if script_url is not None:
        check_url(script_url, "script")
    base = query.get("base")
    if base is not None:
        check_url(base, "base")
    output = query.get("output")
    if output is not None:
        check_url(output, "output")
    return Job(
        script_url=script_url,
        script_text=script_text,
        base=base,
        args=parse_args(query.get("args", "")),
        named={k: v for k, v in query.items() if k not in RESERVED},
        output_url=output,
    )
