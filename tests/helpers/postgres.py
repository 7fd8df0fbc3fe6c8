"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, a fresh cluster
in a temporary directory, listening on 127.0.0.1 only, stopped by PID at the end.

PostgreSQL refuses to run as root; when the tests run as root, the cluster belongs to the
``postgres`` user (``runuser``). Without the binaries the caller skips, saying why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def unavailable_reason() -> str:
    """Why no PostgreSQL can run here, or "" when one can."""
    if _bindir() is None:
        return "PostgreSQL binaries not found (Debian: apt-get install -y postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser, and PostgreSQL refuses to run as root"
    return ""


@contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[str]:
    """Runs a cluster in a fresh directory under the system's temporary directory (which the
    ``postgres`` user can reach, unlike pytest's 0700 ones); yields its SQLAlchemy URL
    (psycopg 3 driver); removes the directory at the end.

    Tests run without fsync (nothing of theirs must survive a power loss); ``durable`` keeps
    PostgreSQL's defaults, for benchmarks of durable commits."""
    bindir = _bindir()
    assert bindir is not None, unavailable_reason()
    base = Path(tempfile.mkdtemp(prefix="cgn-pg-"))
    data, sockets = base / "pgdata", base / "pgsock"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    subprocess.run(
        [
            *as_user,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets}"
    if not durable:
        options += " -c fsync=off"
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "-l",
            str(base / "postgres.log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pass
        else:
            os.kill(pid, 9)
        shutil.rmtree(base, ignore_errors=True)
