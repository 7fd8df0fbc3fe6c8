"""The DService descriptor, ``dservice.toml``: what a DService is and how a runtime starts it.

One file describes one DService version. The ``process`` runtime reads ``[process]``; the
Docker runtime and signed packages of a later issue add their own tables (``[docker]``,
``[package]``) beside it, so one descriptor can carry every way of running the same service
(docs/dservices.md has the format, field by field)::

    name = "hello"
    version = "0.1.0"

    [process]
    command = ["python3", "app.py", "--listen", "{listen}"]
    env = { GREETING = "hello" }

    [resources]
    min_threads = 1
    min_memory_mb = 64

    egress = []           # none: the DService needs no network beyond its listener

    [limits]
    max_body_bytes = 1048576   # optional: the largest request body it takes

Parsed with :mod:`tomllib` and validated by pydantic models (extra keys are errors, so a typo
never passes silently); errors name the file and the field.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cgn_common.errors import InvalidArgumentError

#: A DService name as it appears in ``/v1/dservices/{name}/...``: also the node's rule.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)

#: The placeholders a runtime substitutes in ``[process] command`` (and nothing else: other
#: braces stay as written).
PLACEHOLDERS = ("{listen}", "{host}", "{port}", "{socket}")
_TCP_ONLY = ("{host}", "{port}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProcessSpec(_Strict):
    """``[process]``: how the ``process`` runtime starts the DService."""

    #: The argument list, run without a shell; ``{listen}``, ``{host}``, ``{port}`` and
    #: ``{socket}`` are replaced by the listening address the runtime chose.
    command: tuple[str, ...] = Field(min_length=1)
    #: Variables added to the DService's environment (after the miner's allow-list).
    env: dict[str, str] = Field(default_factory=dict)
    #: ``tcp``: a loopback port (``CGN_LISTEN=127.0.0.1:PORT``); ``unix``: a socket file
    #: (``CGN_LISTEN=unix:PATH``).
    listen: Literal["tcp", "unix"] = "tcp"
    #: Working directory, relative to the descriptor's directory.
    cwd: str = "."
    #: How long the DService may take to accept its first connection.
    start_timeout_s: float = Field(default=15.0, gt=0, le=300)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"env: {key!r} is not a variable name")
            if key == "CGN_LISTEN":
                raise ValueError("env: CGN_LISTEN is set by the runtime")
            if "\0" in value:
                raise ValueError(f"env: {key} holds a NUL byte")
        return env


class Resources(_Strict):
    """``[resources]``: the least a miner must have to run the DService."""

    min_threads: int = Field(default=1, ge=1)
    min_memory_mb: int = Field(default=0, ge=0)
    min_cpu_kmips: int = Field(default=0, ge=0)
    min_bandwidth_kbps: int = Field(default=0, ge=0)
    gpu: bool = False


#: The largest ``[limits] max_body_bytes`` a descriptor may give: 2 GiB.
MAX_BODY_LIMIT_BYTES = 2 * 1024 * 1024 * 1024


class Limits(_Strict):
    """``[limits]``: what the DService takes at most."""

    #: The largest request body in bytes (at most 2 GiB); none: no limit of its own (the
    #: node's and the account's still apply). Miners announce it in their offers; the node
    #: and the miner refuse a larger body before reading it (BODY_TOO_LARGE).
    max_body_bytes: int | None = Field(default=None, gt=0, le=MAX_BODY_LIMIT_BYTES, strict=True)


class DServiceDescriptor(_Strict):
    """A parsed ``dservice.toml``."""

    name: str
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
    description: str = ""
    process: ProcessSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    limits: Limits = Field(default_factory=Limits)
    #: Hosts (``host:port``) the DService may reach. Empty (the default): none. The process
    #: runtime cannot enforce this (docs/dservices.md); the Docker runtime will.
    egress: tuple[str, ...] = ()
    #: Path of the DService's verifier endpoint for tier-4 results, e.g. ``/verify``.
    verifier: str | None = None
    #: Path of the DService's cost estimator endpoint, e.g. ``/estimate``.
    estimator: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                f"{name!r} is not a DService name (1-63 of a-z 0-9 . _ -, "
                "starting with a letter or digit)"
            )
        return name

    @field_validator("verifier", "estimator")
    @classmethod
    def _endpoint(cls, path: str | None) -> str | None:
        if path is not None and not re.fullmatch(r"/[\x21-\x7e]*", path):
            raise ValueError(f"{path!r} must be a path starting with '/'")
        return path


@dataclass(frozen=True)
class Listen:
    """Where a runtime told a DService to listen: a loopback port or a Unix socket."""

    host: str = "127.0.0.1"
    port: int = 0
    socket: str = ""

    @property
    def value(self) -> str:
        """``CGN_LISTEN``: ``host:port`` or ``unix:PATH``."""
        return f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"

    @property
    def authority(self) -> str:
        """The ``Host`` header a client of this listener sends."""
        return "localhost" if self.socket else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class LoadedDescriptor:
    """A descriptor and the directory its relative paths start from."""

    descriptor: DServiceDescriptor
    base_dir: Path

    @property
    def name(self) -> str:
        """The DService's name."""
        return self.descriptor.name

    @property
    def max_body_bytes(self) -> int:
        """The DService's request-body limit in bytes; 0: none of its own."""
        return self.descriptor.limits.max_body_bytes or 0

    @property
    def process(self) -> ProcessSpec:
        """The ``[process]`` table (checked present at load)."""
        assert self.descriptor.process is not None
        return self.descriptor.process

    def argv(self, listen: Listen) -> list[str]:
        """The command with its placeholders replaced for ``listen``."""
        values = {
            "{listen}": listen.value,
            "{host}": listen.host,
            "{port}": str(listen.port),
            "{socket}": listen.socket,
        }
        out = []
        for arg in self.process.command:
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            out.append(arg)
        return out

    @property
    def cwd(self) -> Path:
        """The DService's working directory."""
        return (self.base_dir / self.process.cwd).resolve()


def parse_descriptor(text: str, source: str, base_dir: Path) -> LoadedDescriptor:
    """Parses descriptor ``text`` (from ``source``, for messages); InvalidArgumentError says
    what is wrong and where."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"{source}: not valid TOML: {exc}") from None
    try:
        descriptor = DServiceDescriptor.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidArgumentError(f"{source}: {problems}") from None
    process = descriptor.process
    if process is None:
        raise InvalidArgumentError(f"{source}: a [process] table with command is required")
    joined = " ".join(process.command)
    if process.listen == "unix" and any(p in joined for p in _TCP_ONLY):
        raise InvalidArgumentError(
            f"{source}: process.command uses {{host}}/{{port}} but process.listen is 'unix'"
        )
    if process.listen == "tcp" and "{socket}" in joined:
        raise InvalidArgumentError(
            f"{source}: process.command uses {{socket}}: set process.listen = 'unix'"
        )
    return LoadedDescriptor(descriptor, base_dir)


def load_descriptor(path: Path) -> LoadedDescriptor:
    """Reads and checks a ``dservice.toml``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{path}: cannot read the descriptor: {exc}") from None
    return parse_descriptor(text, str(path), path.resolve().parent)


#: The DServices that ship with the CGN, as descriptors of the same shape as a developer's.
_BUILTIN_MODULES = {"echo": "dservices.echo", "mediagen": "dservices.mediagen"}


def builtin_descriptor(name: str) -> LoadedDescriptor:
    """The descriptor of built-in DService ``name``; InvalidArgumentError when unknown."""
    module = _BUILTIN_MODULES.get(name)
    if module is None:
        raise InvalidArgumentError(
            f"unknown built-in DService {name!r} (built-in: {', '.join(sorted(_BUILTIN_MODULES))})"
        )
    descriptor = DServiceDescriptor(
        name=name,
        version="0.1.0",
        process=ProcessSpec(command=(sys.executable, "-m", module)),
    )
    return LoadedDescriptor(descriptor, Path.cwd())


BUILTIN_DSERVICES = tuple(_BUILTIN_MODULES)
