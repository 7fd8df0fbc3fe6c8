"""MediaScript's values and their ECMAScript-like rules: truthiness, equality, conversion to
string. A value is ``None`` (null), ``bool``, ``float`` (every number), ``str``, ``list`` (an
array) or a :class:`~dservices.mediagen.media.Media`; nothing else ever reaches a script."""

from __future__ import annotations

import math
from typing import Any

from dservices.mediagen.errors import LimitExceededError, ScriptRuntimeError
from dservices.mediagen.media import Media

Value = Any  # None | bool | float | str | list[Value] | Media (mypy cannot spell the recursion)

#: Deepest array nesting converted to a string (arrays may contain themselves).
_MAX_STRING_DEPTH = 16


def type_name(value: Value) -> str:
    """The name a script error uses for the type of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "Media"


def truthy(value: Value) -> bool:
    """ECMAScript truthiness: null, false, 0, NaN and "" are false."""
    if value is None or value is False:
        return False
    if isinstance(value, float):
        return value != 0.0 and not math.isnan(value)
    if isinstance(value, str):
        return value != ""
    return True


def equal(left: Value, right: Value) -> bool:
    """``==`` and ``===`` alike: same type and same value; arrays and media by identity."""
    if isinstance(left, list | Media) or isinstance(right, list | Media):
        return left is right
    return type(left) is type(right) and left == right


def number_text(value: float) -> str:
    """A number as ECMAScript prints it: ``128``, ``0.5``, ``NaN``, ``Infinity``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def to_text(value: Value, limit: int, depth: int = 0) -> str:
    """``String(value)``; refuses results longer than ``limit`` characters."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = number_text(value)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, list):
        if depth >= _MAX_STRING_DEPTH:
            raise ScriptRuntimeError("an array nested too deeply to turn into a string")
        parts: list[str] = []
        size = 0
        for item in value:
            part = to_text(item, limit, depth + 1)
            size += len(part) + 1
            if size > limit:
                raise _too_long(limit)
            parts.append(part)
        text = ",".join(parts)
    else:
        text = "[object Media]"
    if len(text) > limit:
        raise _too_long(limit)
    return text


def to_number(value: Value) -> float:
    """``Number(value)``: numbers stay, numeric strings parse, booleans are 0/1, else NaN."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip()) if value.strip() else 0.0
        except ValueError:
            return math.nan
    return 0.0 if value is None else math.nan


def _too_long(limit: int) -> LimitExceededError:
    return LimitExceededError(
        f"a string longer than {limit} characters",
        limit="max_string_chars",
        value=limit,
        status=422,
    )
