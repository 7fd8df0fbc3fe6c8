"""The address policy and the fetcher, in process. Refusals happen before any connection, so
the private addresses below are never contacted; real fetches go to the loopback test server."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp import web

from dservices.mediagen.errors import (
    AddressRefusedError,
    FetchError,
    LimitExceededError,
    MediaGenError,
    RequestError,
    UnsupportedSchemeError,
)
from dservices.mediagen.fetch import Fetcher, FetchLimits
from dservices.mediagen.mrl import parse_args
from dservices.mediagen.policy import AddressPolicy, check_url
from tests.dservices.conftest import FileServer

REFUSED_BY_DEFAULT = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "::ffff:127.0.0.1",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "fc00::1",
    "169.254.169.254",
    "fe80::1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
]


@pytest.mark.parametrize("address", REFUSED_BY_DEFAULT)
def test_default_policy_refuses_local_and_private_addresses(address: str) -> None:
    assert AddressPolicy().refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_default_policy_allows_public_addresses(address: str) -> None:
    assert AddressPolicy().refusal(ipaddress.ip_address(address)) is None


def test_settings_open_only_their_own_ranges() -> None:
    loopback = AddressPolicy(allow_loopback=True)
    assert loopback.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert loopback.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert loopback.refusal(ipaddress.ip_address("10.0.0.1")) is not None
    private = AddressPolicy(allow_private=True)
    assert private.refusal(ipaddress.ip_address("192.168.1.1")) is None
    assert private.refusal(ipaddress.ip_address("127.0.0.1")) is not None
    # Link-local (cloud metadata) stays refused whatever the settings.
    both = AddressPolicy(allow_loopback=True, allow_private=True)
    assert both.refusal(ipaddress.ip_address("169.254.169.254")) is not None


def test_a_name_is_checked_by_every_address_it_resolves_to() -> None:
    with pytest.raises(AddressRefusedError, match="localhost resolves to"):
        AddressPolicy().resolve("localhost", 80)  # /etc/hosts: no DNS traffic


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("file:///etc/passwd", UnsupportedSchemeError),
        ("ftp://example.com/a.png", UnsupportedSchemeError),
        ("gopher://example.com/", UnsupportedSchemeError),
        ("data:image/png;base64,AAAA", UnsupportedSchemeError),
        ("car.tif", UnsupportedSchemeError),
        ("http://", RequestError),
        ("http://user:pw@example.com/a.png", RequestError),
        ("http://example.com:99999/", RequestError),
    ],
)
def test_check_url_refuses(url: str, error: type[MediaGenError]) -> None:
    with pytest.raises(error):
        check_url(url, "source")


def _fetcher(allow_loopback: bool = True, max_fetches: int = 10) -> Fetcher:
    limits = FetchLimits(max_fetches, timeout_s=5.0, deadline=time.monotonic() + 30)
    return Fetcher(AddressPolicy(allow_loopback=allow_loopback), limits)


def test_private_address_is_refused_before_connecting() -> None:
    fetcher = _fetcher(allow_loopback=False)
    for url in ("http://10.0.0.1/x.png", "http://127.0.0.1:1/x.png", "http://[::1]/x"):
        with pytest.raises(AddressRefusedError):
            fetcher.get(url, 1000, "load")


async def test_fetch_follows_up_to_three_redirects(files: FileServer) -> None:
    files.add("a.txt", b"hello")
    fetcher = _fetcher()
    assert await asyncio.to_thread(fetcher.get, files.url("redirect/3/a.txt"), 100, "load") == (
        b"hello"
    )
    with pytest.raises(FetchError, match="more than 3 redirects"):
        await asyncio.to_thread(fetcher.get, files.url("redirect/4/a.txt"), 100, "load")


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("file:///etc/passwd", UnsupportedSchemeError),
        ("http://10.1.2.3/secret", AddressRefusedError),
        ("http://169.254.169.254/latest/meta-data/", AddressRefusedError),
    ],
)
async def test_every_redirect_hop_is_checked(
    files: FileServer, target: str, error: type[MediaGenError]
) -> None:
    url = files.url(f"redirect-to?url={target}")
    with pytest.raises(error):
        await asyncio.to_thread(_fetcher().get, url, 100, "load")


async def test_fetch_limits(files: FileServer) -> None:
    files.add("big.bin", b"x" * 5000)
    with pytest.raises(LimitExceededError) as caught:
        await asyncio.to_thread(_fetcher().get, files.url("big.bin"), 4999, "load")
    assert caught.value.details["limit"] == "max_fetch_bytes"
    fetcher = _fetcher(max_fetches=2)
    await asyncio.to_thread(fetcher.get, files.url("big.bin"), 5000, "load")
    with pytest.raises(LimitExceededError, match="more than 2 fetches"):
        await asyncio.to_thread(fetcher.get, files.url("redirect/1/big.bin"), 5000, "load")


async def test_fetch_failures_are_fetch_errors(files: FileServer) -> None:
    with pytest.raises(FetchError, match="answered 404"):
        await asyncio.to_thread(_fetcher().get, files.url("missing.png"), 100, "load")
    with pytest.raises(FetchError, match="connection refused"):
        await asyncio.to_thread(_fetcher().get, "http://127.0.0.1:1/x.png", 100, "load")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ()),
        ('"http://h/tomato.jpg",128', ("http://h/tomato.jpg", 128.0)),
        ('"a,b", -1.5, true', ("a,b", -1.5, True)),
        ('"quote \\" inside"', ('quote " inside',)),
    ],
)
def test_args_parse(raw: str, expected: tuple[object, ...]) -> None:
    assert parse_args(raw) == expected


@pytest.mark.parametrize("raw", ["tomato.jpg", '"a",', "[1]", "null", "NaN", '{"a": 1}', "1e999"])
def test_args_refuse_anything_else(raw: str) -> None:
    with pytest.raises(RequestError, match="args must be"):
        parse_args(raw)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https_connects_to_the_checked_address_and_verifies_the_name(
    tmp_path: Path,
) -> None:
    cert, key = await asyncio.to_thread(_self_signed, tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"over tls")

    app = web.Application()
    app.router.add_get("/a.txt", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        limits = FetchLimits(5, timeout_s=5.0, deadline=time.monotonic() + 30)
        policy = AddressPolicy(allow_loopback=True)
        trusted = Fetcher(policy, limits, ca_file=str(cert))
        url = f"https://127.0.0.1:{port}/a.txt"
        assert await asyncio.to_thread(trusted.get, url, 100, "load") == b"over tls"
        with pytest.raises(FetchError, match="TLS"):
            await asyncio.to_thread(Fetcher(policy, limits).get, url, 100, "load")
    finally:
        await runner.cleanup()
