"""dservice.toml: what is accepted, what is refused with a message naming the field, and how
the command's placeholders are filled."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cgn_cli._dservice import scaffold
from cgn_cli.main import cli
from cgn_common.descriptor import Listen, builtin_descriptor, load_descriptor, parse_descriptor
from cgn_common.errors import InvalidArgumentError

GOOD = """
name = "resize"
version = "1.2.0"
egress = []
verifier = "/verify"

[process]
command = ["./server", "--bind", "{listen}", "--host={host}", "--port={port}", "{literal}"]
env = { MODE = "fast" }

[resources]
min_threads = 2
min_memory_mb = 256
gpu = false
"""


def test_a_descriptor_is_parsed_and_its_placeholders_filled(tmp_path: Path) -> None:
    loaded = parse_descriptor(GOOD, "dservice.toml", tmp_path)
    assert loaded.name == "resize"
    assert loaded.descriptor.resources.min_threads == 2
    assert loaded.descriptor.egress == ()
    assert loaded.descriptor.verifier == "/verify"
    assert loaded.process.env == {"MODE": "fast"}
    assert loaded.cwd == tmp_path.resolve()
    argv = loaded.argv(Listen(port=8123))
    assert argv == [
        "./server",
        "--bind",
        "127.0.0.1:8123",
        "--host=127.0.0.1",
        "--port=8123",
        "{literal}",  # not a placeholder: left as written
    ]


def test_a_unix_socket_descriptor_gets_the_socket_path(tmp_path: Path) -> None:
    text = 'name = "u"\nversion = "1"\n[process]\nlisten = "unix"\ncommand = ["s", "{socket}"]\n'
    loaded = parse_descriptor(text, "d", tmp_path)
    assert loaded.argv(Listen(socket="/tmp/x.sock")) == ["s", "/tmp/x.sock"]
    assert Listen(socket="/tmp/x.sock").value == "unix:/tmp/x.sock"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "not valid TOML"),
        ('name = "a"\nversion = "1"\n', "a [process] table with command is required"),
        ('name = "Bad Name"\nversion = "1"\n[process]\ncommand = ["x"]', "name: "),
        ('name = "a"\n[process]\ncommand = ["x"]', "version: Field required"),
        ('name = "a"\nversion = "1"\n[process]\ncommand = []', "process.command"),
        ('name = "a"\nversion = "1"\nimage = "x"\n[process]\ncommand = ["x"]', "image: Extra"),
        ('name = "a"\nversion = "1"\n[process]\ncommand = ["x"]\ncomand = 1', "process.comand"),
        (
            'name = "a"\nversion = "1"\n[process]\ncommand = ["x"]\nenv = { CGN_LISTEN = "x" }',
            "CGN_LISTEN is set by the runtime",
        ),
        ('name = "a"\nversion = "1"\n[process]\ncommand = ["x", "{socket}"]', "listen = 'unix'"),
        (
            'name = "a"\nversion = "1"\n[process]\nlisten = "unix"\ncommand = ["x", "{port}"]',
            "process.listen is 'unix'",
        ),
        ('name = "a"\nversion = "1"\nverifier = "verify"\n[process]\ncommand = ["x"]', "verifier"),
        (
            'name = "a"\nversion = "1"\n[resources]\nmin_threads = 0\n[process]\ncommand = ["x"]',
            "min_threads",
        ),
    ],
)
def test_a_bad_descriptor_is_refused_with_the_field_named(text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_descriptor(text, "dservice.toml", Path("."))
    assert info.value.message.startswith("dservice.toml: ")
    assert message in info.value.message


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot read the descriptor"):
        load_descriptor(tmp_path / "nope.toml")


def test_the_scaffold_is_a_valid_descriptor_and_built_ins_are_descriptors(tmp_path: Path) -> None:
    loaded = load_descriptor(scaffold("my-svc", tmp_path))
    assert loaded.name == "my-svc"
    assert loaded.argv(Listen(port=1))[-2:] == ["--listen", "127.0.0.1:1"]
    assert (tmp_path / "my-svc" / "app.py").exists()
    assert builtin_descriptor("echo").process.command[1:] == ("-m", "dservices.echo")
    with pytest.raises(InvalidArgumentError, match="unknown built-in"):
        builtin_descriptor("nope")


def test_cgn_dservice_init_scaffolds_once_and_refuses_bad_names(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["dservice", "init", "svc", "--dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    assert f"--dservice {tmp_path / 'svc' / 'dservice.toml'}" in made.output
    again = runner.invoke(cli, ["dservice", "init", "svc", "--dir", str(tmp_path)])
    assert again.exit_code == 2
    assert "exists and is not empty" in again.output
    bad = runner.invoke(cli, ["dservice", "init", "Bad/Name", "--dir", str(tmp_path)])
    assert bad.exit_code == 2
    assert "is not a DService name" in bad.output


def test_a_body_limit_is_read_from_limits_and_is_none_by_default(tmp_path: Path) -> None:
    plain = 'name = "a"\nversion = "1"\n[process]\ncommand = ["x"]\n'
    assert parse_descriptor(plain, "d", tmp_path).max_body_bytes == 0
    limited = plain + "[limits]\nmax_body_bytes = 1048576\n"
    loaded = parse_descriptor(limited, "d", tmp_path)
    assert loaded.descriptor.limits.max_body_bytes == 1048576
    assert loaded.max_body_bytes == 1048576
    at_most = plain + f"[limits]\nmax_body_bytes = {2 * 1024**3}\n"
    assert parse_descriptor(at_most, "d", tmp_path).max_body_bytes == 2 * 1024**3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "greater than 0"),
        ("-5", "greater than 0"),
        (str(2 * 1024**3 + 1), "less than or equal to 2147483648"),
        ("1.5", "valid integer"),
        ('"1024"', "valid integer"),
        ("true", "valid integer"),
    ],
)
def test_a_bad_body_limit_is_refused_naming_the_field(value: str, message: str) -> None:
    base = 'name = "a"\nversion = "1"\n[process]\ncommand = ["x"]\n[limits]\n'
    text = f"{base}max_body_bytes = {value}\n"
    with pytest.raises(InvalidArgumentError) as info:
        parse_descriptor(text, "dservice.toml", Path("."))
    assert "limits.max_body_bytes" in info.value.message
    assert message in info.value.message
    with pytest.raises(InvalidArgumentError, match=r"limits\.max_body: Extra"):
        parse_descriptor(f"{base}max_body = 1\n", "dservice.toml", Path("."))
