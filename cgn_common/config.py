"""Configuration loading: environment variable, then TOML config file, then default.

Each process declares a frozen dataclass whose fields carry their documentation in
``field(metadata={"help": ...})``. ``load_config`` fills it once at start. Secrets are
wrapped in :class:`Secret` so they never print.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from cgn_common.errors import InvalidArgumentError

T = TypeVar("T")


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Returns the secret value; call only where it is used."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def option(default: Any, help: str) -> Any:
    """Declares a config field with its default and documentation."""
    if isinstance(default, list | dict):
        factory = default.copy
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _convert(name: str, raw: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if raw in (None, "") else _convert(name, raw, args[0])
    try:
        if hint is Secret:
            return raw if isinstance(raw, Secret) else Secret(str(raw))
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        if hint is int:
            return int(raw)
        if hint is str:
            return str(raw)
        if hint is Path:
            return Path(raw)
        if origin is list:
            (item,) = typing.get_args(hint)
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return [_convert(name, i, item) for i in items if i != ""]
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"config option {name!r}: cannot read {raw!r}") from exc
    return raw


def load_config(
    cls: type[T],
    *,
    path: Path | None = None,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Builds ``cls`` from overrides, then ``{env_prefix}{NAME}`` variables, then the file."""
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read config file {path}: {exc}") from exc
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(file_values) - known
    if unknown:
        raise InvalidArgumentError(f"unknown config options in {path}: {sorted(unknown)}")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        env_name = f"{env_prefix}{field.name.upper()}"
        if overrides and field.name in overrides:
            raw = overrides[field.name]
        elif env_name in environ:
            raw = environ[env_name]
        elif field.name in file_values:
            raw = file_values[field.name]
        else:
            continue
        values[field.name] = _convert(field.name, raw, hints[field.name])
    return cls(**values)
