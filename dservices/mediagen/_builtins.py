"""The interpreter's helpers: the ``Math`` functions, argument binding, comparisons and the
conversion of a named MRL parameter to the type of its default."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from dservices.mediagen import ops
from dservices.mediagen.errors import MediaGenError, RequestError, ScriptRuntimeError
from dservices.mediagen.values import Value, to_number


def _math(name: str, fn: Callable[..., float], arity: int | None) -> Callable[[list[Value]], float]:
    def call(args: list[Value]) -> float:
        if arity is not None and len(args) != arity:
            raise ScriptRuntimeError(f"Math.{name}() takes {arity} argument(s)")
        if not args or not all(isinstance(a, float) for a in args):
            raise ScriptRuntimeError(f"Math.{name}() takes numbers")
        try:
            return float(fn(*args))
        except (ValueError, OverflowError):
            return math.nan

    return call


MATH: dict[str, Callable[[list[Value]], float]] = {
    "floor": _math("floor", math.floor, 1),
    "ceil": _math("ceil", math.ceil, 1),
    "round": _math("round", lambda x: math.floor(x + 0.5), 1),
    "abs": _math("abs", abs, 1),
    "sqrt": _math("sqrt", math.sqrt, 1),
    "pow": _math("pow", math.pow, 2),
    "min": _math("min", min, None),
    "max": _math("max", max, None),
}


def bind(
    what: str,
    params: Sequence[tuple[str, Any]],
    args: Sequence[tuple[str | None, Value]],
    error: type[MediaGenError] = ScriptRuntimeError,
) -> dict[str, Any]:
    """Binds positional then named arguments to ``params`` (name, default); a default of
    ``ops.REQUIRED`` makes the parameter required. Returns name -> value or default."""
    names = [name for name, _ in params]
    bound: dict[str, Any] = {}
    for position, (name, value) in enumerate(args):
        if name is None:
            if position >= len(names):
                raise error(f"{what} takes at most {len(names)} argument(s), got more")
            name = names[position]
        elif name not in names:
            expected = ", ".join(names) or "no arguments"
            raise error(f"{what} has no parameter {name!r} (it takes: {expected})")
        if name in bound:
            raise error(f"{what}: argument {name!r} is given twice")
        bound[name] = value
    for name, default in params:
        if name not in bound:
            if default is ops.REQUIRED:
                raise error(f"{what}: missing argument {name!r}")
            bound[name] = default
    return bound


def compare(op: str, left: Any, right: Any) -> bool:
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def convert_parameter(name: str, raw: str, default: Value) -> Value:
    """A named MRL parameter (always a string) as the type of its default."""
    if isinstance(default, bool):
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise RequestError(f"parameter {name!r} must be true or false")
    if isinstance(default, float):
        number = to_number(raw)
        if not raw.strip() or math.isnan(number) or math.isinf(number):
            raise RequestError(f"parameter {name!r} must be a number, not {raw!r}")
        return number
    return raw
