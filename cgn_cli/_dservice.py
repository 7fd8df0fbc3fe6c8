"""``cgn dservice init NAME``: scaffolds a working DService (a descriptor and a small HTTP/1.1
server on Python's standard library) that ``cgn sandbox --dservice NAME/dservice.toml`` runs
as it is. docs/dservices.md walks through it."""

from __future__ import annotations

import re
from pathlib import Path

import click

from cgn_common.descriptor import NAME_PATTERN, load_descriptor

DESCRIPTOR_TEMPLATE = """\
# The descriptor of the {name} DService (docs/dservices.md has every field).
name = "{name}"
version = "0.1.0"
description = "A DService made by `cgn dservice init`."

# Nothing is needed from the network beyond the listener (the process runtime cannot enforce
# this; the Docker runtime will).
egress = []

[process]
# Run without a shell, in this directory. The miner replaces {{listen}} (or {{host}} and
# {{port}}) with where it wants the server, and sets CGN_LISTEN to the same.
command = ["python3", "app.py", "--listen", "{{listen}}"]
env = {{ GREETING = "Hello" }}

[resources]
min_threads = 1
min_memory_mb = 32
"""

APP_TEMPLATE = '''\
"""The {name} DService: an ordinary HTTP/1.1 server (Python's standard library only).

    GET  /            -> {{"greeting": ..., "path": ..., "base_url": ...}}
    POST /echo        -> the request body, unchanged

Run it alone with ``python3 app.py --listen 127.0.0.1:8080``; the CGN's miner starts it with
the address it chose.
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer says its Content-Length

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/":
            self._send(404, b"not found\\n", "text/plain")
            return
        # Behind the CGN the public URL of this service is X-Forwarded-Proto :// X-Forwarded-Host
        # X-Forwarded-Prefix (docs/dservices.md, "Your own URLs").
        base = "{{}}://{{}}{{}}".format(
            self.headers.get("X-Forwarded-Proto", "http"),
            self.headers.get("X-Forwarded-Host", self.headers.get("Host", "")),
            self.headers.get("X-Forwarded-Prefix", ""),
        )
        answer = {{
            "greeting": os.environ.get("GREETING", "Hello") + " from {name}",
            "path": self.path,
            "base_url": base,
        }}
        self._send(200, json.dumps(answer).encode() + b"\\n", "application/json")

    do_HEAD = do_GET

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != "/echo":
            self._send(404, b"not found\\n", "text/plain")
            return
        self._send(200, body, self.headers.get("Content-Type", "application/octet-stream"))

    def log_message(self, format, *args):
        # stderr: the miner logs it as this DService's output.
        sys.stderr.write("%s %s\\n" % (self.address_string(), format % args))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default=os.environ.get("CGN_LISTEN", "127.0.0.1:8080"))
    host, _, port = parser.parse_args().listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"{name} listening on {{host}}:{{port}}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
'''


def scaffold(name: str, parent: Path) -> Path:
    """Writes ``parent/name/dservice.toml`` and ``app.py``; returns the descriptor's path."""
    if not re.match(NAME_PATTERN, name):
        raise click.UsageError(
            f"{name!r} is not a DService name (1-63 of a-z 0-9 . _ -, starting with a letter "
            "or digit)"
        )
    directory = parent / name
    if directory.exists() and any(directory.iterdir()):
        raise click.UsageError(f"{directory} exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = directory / "dservice.toml"
    descriptor.write_text(DESCRIPTOR_TEMPLATE.format(name=name))
    (directory / "app.py").write_text(APP_TEMPLATE.format(name=name))
    load_descriptor(descriptor)  # what we write must be what we accept
    return descriptor


@click.group()
def dservice() -> None:
    """Write your own DServices (docs/dservices.md)."""


@dservice.command("init")
@click.argument("name")
@click.option(
    "--dir",
    "parent",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Where to create the NAME directory.",
)
def init(name: str, parent: Path) -> None:
    """Scaffold a working DService NAME: NAME/dservice.toml and NAME/app.py."""
    descriptor = scaffold(name, parent)
    click.echo(f"Created {descriptor} and {descriptor.parent / 'app.py'}.")
    click.echo(f"Run it in the sandbox: scripts/sandbox --dservice {descriptor}")
