"""Your own DServices through ``cgn sandbox --dservice``, and the proxy compared with calling
them directly.

The differential suite: a third-party web service (Starlette under uvicorn,
``tests/dservices/httpapp``, no CGN code in it) runs in the sandbox from its descriptor, and a
second copy of it runs directly from the same descriptor. Every case goes to both with a raw
HTTP/1.1 client; status, headers and body bytes must match up to the differences
docs/dservices.md documents (``Server``, ``Date``'s value, ``X-Request-Id``, a chunked answer
arriving with ``Content-Length``, what the DService is told in ``Host`` and
``X-Forwarded-*``). Then the dangerous cases: a redirect to a loopback address only the miner
could reach is handed back, never fetched; one account's cookie never reaches another's
request; and the tutorial's scaffolded DService serves.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cgn_cli._admin import AdminClient
from cgn_cli._dservice import scaffold
from cgn_common.certs import Identity, Role
from cgn_common.descriptor import Listen, load_descriptor
from cgn_common.types import AccountKind, Tier
from tests.helpers.http1 import Answer, Headers, exchange
from tests.helpers.sandbox import RunningSandbox, start_sandbox, stop_sandbox

HTTPAPP = Path(__file__).resolve().parent / "dservices" / "httpapp" / "dservice.toml"
PREFIX = b"/v1/dservices/httpapp"


@dataclass
class Env:
    """The module's sandbox, the direct copy of the DService, and two accounts' tokens."""

    sandbox: RunningSandbox
    gateway: tuple[str, int]
    direct: tuple[str, int]
    token_a: str
    token_b: str
    hello_dir: Path
    scratch: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_direct(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """The same DService, started from the same descriptor as the miner starts it."""
    loaded = load_descriptor(HTTPAPP)
    port = _free_port()
    listen = Listen(port=port)
    process = subprocess.Popen(
        loaded.argv(listen),
        cwd=loaded.cwd,
        env={**env, **loaded.process.env, "CGN_LISTEN": listen.value},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the direct DService exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("the direct DService did not listen in time")


async def _tokens(sb: RunningSandbox) -> tuple[str, str]:
    tls = sb.tls(Identity(Role.OPERATOR, "sandbox-operator"))
    admin = AdminClient(sb.info["processes"]["central"]["endpoints"]["admin"], tls)
    try:
        other_id, other_key = await admin.create_account(
            AccountKind.ENTERPRISE, "second enterprise", allowed_tiers=[Tier.TIER_2_DATACENTER]
        )
    finally:
        await admin.close()
    tokens = []
    async with aiohttp.ClientSession() as http:
        for account, key in ((sb.info["account_id"], sb.info["api_key"]), (other_id, other_key)):
            async with http.post(
                f"{sb.url}/v1/sessions", json={"account_id": account, "api_key": key}
            ) as response:
                assert response.status == 200, await response.text()
                tokens.append((await response.json())["token"])
    return tokens[0], tokens[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("dservices")
    hello = scaffold("hello", base)  # `cgn dservice init hello`, as the tutorial says
    # The developer's own PATH finds uvicorn (this virtualenv's).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    child_env = {**os.environ, "PATH": path}
    sb = start_sandbox(
        base / "state",
        base / "sandbox.log",
        miners=1,
        miner_tier=2,
        dservices="echo",
        env={"PATH": path},
        descriptors=[HTTPAPP, hello],
    )
    direct: subprocess.Popen[bytes] | None = None
    try:
        direct, port = _start_direct(child_env)
        token_a, token_b = asyncio.run(_tokens(sb))
        host, _, gw_port = sb.url.removeprefix("http://").rpartition(":")
        yield Env(sb, (host, int(gw_port)), ("127.0.0.1", port), token_a, token_b, hello.parent)
    finally:
        if direct is not None:
            direct.terminate()
            try:
                direct.wait(10)
            except subprocess.TimeoutExpired:
                direct.kill()
                direct.wait(10)
        stop_sandbox(sb.process)


@dataclass(frozen=True)
class Case:
    """One request, sent the same way to both."""

    id: str
    method: bytes
    target: bytes
    headers: Headers = field(default_factory=list)
    body: bytes = b""

    @property
    def reflects(self) -> bool:
        """True when the DService answers with what it received."""
        return self.target.startswith(b"/reflect")


def _with_length(headers: Headers, body: bytes) -> Headers:
    return [*headers, (b"Content-Length", str(len(body)).encode())]


_JSON = json.dumps({"name": "café", "list": [1, 2, 3], "nested": {"ok": True}}).encode()
_FORM = b"a=1&a=2&b=%C3%A9&c=x+y&empty="
_BOUNDARY = b"cgn-boundary-7d1f"
_MULTIPART = b"".join(
    [
        b"--" + _BOUNDARY + b"\r\n",
        b'Content-Disposition: form-data; name="field"\r\n\r\n',
        b"value one\r\n",
        b"--" + _BOUNDARY + b"\r\n",
        b'Content-Disposition: form-data; name="upload"; filename="bytes.bin"\r\n',
        b"Content-Type: application/octet-stream\r\n\r\n",
        bytes(range(256)) + b"\r\n",
        b"--" + _BOUNDARY + b"--\r\n",
    ]
)
_MULTIPART_TYPE = (b"Content-Type", b"multipart/form-data; boundary=" + _BOUNDARY)
_BASIC_OK = (b"Authorization", b"Basic " + base64.b64encode(b"alice:s3cret"))

CASES = [
    Case("repeated-query-keys", b"GET", b"/reflect/q?a=1&a=2&b=&a=3&c=%20x&d"),
    Case("unicode-percent-path", b"GET", b"/reflect/caf%C3%A9/%E2%98%95/a%2Fb/s%20p?e=%E2%82%AC"),
    Case("dot-segments-kept", b"GET", b"/reflect/a/./b/../c//d"),
    Case(
        "json-body",
        b"POST",
        b"/parsed",
        _with_length([(b"Content-Type", b"application/json")], _JSON),
        _JSON,
    ),
    Case(
        "json-reflected",
        b"PATCH",
        b"/reflect/json",
        _with_length([(b"Content-Type", b"application/json; charset=utf-8")], _JSON),
        _JSON,
    ),
    Case(
        "form-body",
        b"POST",
        b"/parsed",
        _with_length([(b"Content-Type", b"application/x-www-form-urlencoded")], _FORM),
        _FORM,
    ),
    Case(
        "multipart-body",
        b"POST",
        b"/parsed",
        _with_length([_MULTIPART_TYPE], _MULTIPART),
        _MULTIPART,
    ),
    Case(
        "multipart-reflected",
        b"PUT",
        b"/reflect/upload",
        _with_length([_MULTIPART_TYPE], _MULTIPART),
        _MULTIPART,
    ),
    Case("post-without-body", b"POST", b"/reflect/empty"),
    Case("put-content-length-0", b"PUT", b"/reflect/zero", [(b"Content-Length", b"0")]),
    Case("head", b"HEAD", b"/etag"),
    Case("head-file", b"HEAD", b"/range"),
    Case("options-reflected", b"OPTIONS", b"/reflect/opt", [(b"Origin", b"https://dapp.example")]),
    Case("options-not-allowed", b"OPTIONS", b"/etag"),
    Case("204", b"GET", b"/status/204"),
    Case("204-delete", b"DELETE", b"/status/204"),
    Case("404-of-the-dservice", b"GET", b"/no/such/page"),
    Case("etag-200", b"GET", b"/etag"),
    Case("etag-304", b"GET", b"/etag", [(b"If-None-Match", b'"v1-abc"')]),
    Case("301-relative", b"GET", b"/redirect/301?to=/reflect/moved"),
    Case("302-absolute", b"GET", b"/redirect/302?to=http%3A%2F%2F127.0.0.1%3A9%2Fnowhere"),
    Case(
        "307-post",
        b"POST",
        b"/redirect/307?to=/reflect/again",
        _with_length([(b"Content-Type", b"text/plain")], b"keep me"),
        b"keep me",
    ),
    Case("set-cookie-several", b"GET", b"/cookies/set?a=1&b=2&c=3"),
    Case("gzip-declined", b"GET", b"/big"),
    Case("gzip-by-the-service", b"GET", b"/pregzipped"),
    Case("range", b"GET", b"/range", [(b"Range", b"bytes=10-99")]),
    Case("range-suffix", b"GET", b"/range", [(b"Range", b"bytes=-16")]),
    Case("range-unsatisfiable", b"GET", b"/range", [(b"Range", b"bytes=99999-")]),
    Case(
        "non-ascii-request-headers",
        b"GET",
        b"/reflect/h",
        [
            (b"X-Utf8", "naïve café ☕".encode()),
            (b"X-Latin1", b"caf\xe9"),
            (b"X-Dup", b"first"),
            (b"X-Other", b"between"),
            (b"X-Dup", b"second"),
            (b"X-Empty", b""),
            (b"Cookie", b"a=1; b=2"),
            (b"Accept", b"text/html, */*;q=0.1"),
        ],
    ),
    Case("non-ascii-response-headers", b"GET", b"/odd-headers"),
    Case("no-content-type-invented", b"GET", b"/no-type"),
    Case("basic-auth-accepted", b"GET", b"/basic", [_BASIC_OK]),
    Case("basic-auth-refused", b"GET", b"/basic", [(b"Authorization", b"Basic d3Jvbmc6d3Jvbmc=")]),
    Case("basic-auth-missing", b"GET", b"/basic"),
]


async def _direct(env: Env, case: Case) -> Answer:
    host, port = env.direct
    headers = [(b"Host", f"{host}:{port}".encode()), *case.headers]
    return await exchange(host, port, case.method, case.target, headers, case.body)


def _gateway_host(env: Env) -> bytes:
    return f"{env.gateway[0]}:{env.gateway[1]}".encode()


async def _via(env: Env, case: Case, token: str | None = None, dservice: bytes = PREFIX) -> Answer:
    host, port = env.gateway
    headers = [
        (b"Host", _gateway_host(env)),
        (b"X-CGN-Session", (token or env.token_a).encode()),
        *case.headers,
    ]
    return await exchange(host, port, case.method, dservice + case.target, headers, case.body)


def _response_view(answer: Answer, *, via: bool, direct: Answer, reflected: bool) -> Headers:
    """The answer's headers with the documented differences taken out."""
    out: Headers = []
    chunked = any(n.lower() == b"transfer-encoding" for n, _ in direct.headers)
    for name, value in answer.headers:
        low = name.lower()
        if low in (b"server", b"date", b"x-request-id", b"transfer-encoding"):
            continue  # Server replaced, Date's value is the time, the CGN's request id
        if low == b"content-length" and via and chunked:
            continue  # a chunked answer arrives with Content-Length (bodies are buffered)
        if low == b"content-length" and reflected:
            value = b"*"  # the reflection is longer: the DService saw more headers
        out.append((name, value))
    return out


def _received(answer: Answer) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(answer.body)
    return data


_CGN_REQUEST_HEADERS = {
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-request-id",
    "x-cgn-attempt",
}


def _request_view(received: dict[str, Any]) -> dict[str, Any]:
    """What the DService received, minus what the CGN documents it adds or sets."""
    view = dict(received)
    view["headers"] = [[n, v] for n, v in received["headers"] if n not in _CGN_REQUEST_HEADERS]
    return view


def _check_cgn_request_headers(env: Env, received: dict[str, Any]) -> None:
    seen = {n: v for n, v in received["headers"]}
    assert seen["x-forwarded-prefix"] == "/v1/dservices/httpapp"
    assert seen["x-forwarded-host"] == _gateway_host(env).decode()
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-cgn-attempt"] == "1"
    assert seen["host"].startswith("127.0.0.1:")  # the DService's own listener
    assert "x-cgn-session" not in seen


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_the_gateway_answers_as_the_dservice_does_directly(env: Env, case: Case) -> None:
    direct = await _direct(env, case)
    via = await _via(env, case)
    assert via.status == direct.status, (via, direct)
    assert via.values(b"X-CGN-Error") == []  # the DService's own answer, whatever its status
    assert via.values(b"Server") == [b"cgn-gateway"]
    assert len(via.values(b"Date")) == len(direct.values(b"Date")) == 1
    reflected = case.reflects and direct.status == 200
    assert _response_view(via, via=True, direct=direct, reflected=reflected) == _response_view(
        direct, via=False, direct=direct, reflected=reflected
    )
    if reflected:
        _check_cgn_request_headers(env, _received(via))
        assert _request_view(_received(via)) == _request_view(_received(direct))
    else:
        assert via.body == direct.body


async def test_gzip_passes_encoded_and_untouched(env: Env) -> None:
    """The middleware's gzip stamps the time into its bytes, so the two copies are compared
    decoded; the gateway's answer must still be the encoded one."""
    case = Case("gzip", b"GET", b"/big", [(b"Accept-Encoding", b"gzip")])
    direct, via = await _direct(env, case), await _via(env, case)
    assert via.status == direct.status == 200
    assert via.values(b"content-encoding") == direct.values(b"content-encoding") == [b"gzip"]
    assert via.body[:2] == b"\x1f\x8b"
    assert gzip.decompress(via.body) == gzip.decompress(direct.body)
    assert int(via.values(b"content-length")[0]) == len(via.body)


async def test_hop_by_hop_headers_stop_at_the_cgn_both_ways(env: Env) -> None:
    answer = await _via(env, Case("hop", b"GET", b"/hop"))
    names = {n.lower() for n, _ in answer.headers}
    assert answer.status == 200
    assert not names & {b"keep-alive", b"x-private-hop"}
    assert answer.values(b"Connection") in ([], [b"keep-alive"])  # the gateway's own, if any
    sent = Case(
        "connection-named",
        b"GET",
        b"/reflect/hop",
        [(b"Connection", b"X-Drop-Me"), (b"X-Drop-Me", b"1"), (b"X-Keep-Me", b"2")],
    )
    received = {n for n, _ in _received(await _via(env, sent))["headers"]}
    assert "x-keep-me" in received
    assert not received & {"x-drop-me", "connection"}


async def test_a_redirect_to_loopback_is_handed_back_never_fetched(env: Env) -> None:
    hits: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="internal only")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", secret)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        location = f"http://127.0.0.1:{port}/admin?x=1"
        for code, method in ((302, b"GET"), (307, b"POST"), (301, b"DELETE")):
            target = f"/redirect/{code}?to={location}".encode()
            answer = await _via(env, Case("ssrf", method, target))
            assert answer.status == code
            assert answer.values(b"location") == [location.encode()]
            assert answer.values(b"set-cookie")  # the 3xx's own headers are kept too
        # The DApp crafts the URL itself: still handed back.
        crafted = f"/redirect/302?to=http://127.0.0.1:{port}/steal".encode()
        answer = await _via(env, Case("crafted", b"GET", crafted))
        assert answer.status == 302
        assert hits == []  # nobody fetched the loopback address
        async with aiohttp.ClientSession() as http, http.get(location) as response:
            assert response.status == 200  # it was reachable all along
        assert hits == ["/admin"]
    finally:
        await runner.cleanup()


async def test_one_accounts_cookie_never_reaches_another_accounts_request(env: Env) -> None:
    marker = uuid.uuid4().hex
    set_it = await _via(
        env, Case("set", b"GET", f"/cookies/set?sid={marker}".encode()), env.token_a
    )
    assert set_it.status == 200
    assert any(marker.encode() in v for v in set_it.values(b"set-cookie"))
    for token in (env.token_b, env.token_a):  # one miner: both go through the same client
        answer = await _via(env, Case("look", b"GET", b"/reflect/look"), token)
        received = _received(answer)["headers"]
        assert not [v for n, v in received if n == "cookie"], received
        assert marker not in answer.body.decode()


async def test_a_dservice_header_that_is_not_utf8_is_a_clean_502(env: Env) -> None:
    """aiohttp writes header values as UTF-8 text: the gateway refuses such an answer
    plainly (documented) rather than double-encoding it."""
    answer = await _via(env, Case("latin1", b"GET", b"/latin1-header"))
    assert answer.status == 502
    assert answer.values(b"X-CGN-Error") == [b"1"]
    assert json.loads(answer.body)["error"]["reason"] == "DSERVICE_FAILED"


async def test_the_session_header_rule(env: Env) -> None:
    """X-CGN-Session carries the token and Authorization is the DService's; without it,
    Authorization: Bearer is the token (existing DApps) and is not forwarded."""
    host, port = env.gateway
    bearer = (b"Authorization", f"Bearer {env.token_a}".encode())
    legacy = await exchange(
        host, port, b"GET", PREFIX + b"/reflect/legacy", [(b"Host", _gateway_host(env)), bearer]
    )
    assert legacy.status == 200
    names = {n for n, _ in _received(legacy)["headers"]}
    assert "authorization" not in names
    own = await _via(env, Case("own", b"GET", b"/reflect/own", [(b"Authorization", b"Bearer xyz")]))
    assert ["authorization", "Bearer xyz"] in _received(own)["headers"]
    basic = await exchange(
        host, port, b"GET", PREFIX + b"/basic", [(b"Host", _gateway_host(env)), _BASIC_OK]
    )
    assert basic.status == 401  # Basic is not a session token: the CGN's own 401
    assert basic.values(b"X-CGN-Error") == [b"1"]


async def test_names_are_matched_as_written_and_upgrades_are_501(env: Env) -> None:
    encoded_name = b"/v1/dservices/ht%74pa%70p"
    encoded = await _via(env, Case("enc", b"GET", b"/reflect/x"), dservice=encoded_name)
    assert encoded.status == 404
    assert json.loads(encoded.body)["error"]["reason"] == "DSERVICE_NAME_ENCODED"
    upgrade = await _via(
        env,
        Case(
            "ws",
            b"GET",
            b"/reflect/ws",
            [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"X-Other", b"13")],
        ),
    )
    assert upgrade.status == 501
    assert json.loads(upgrade.body)["error"]["reason"] == "UPGRADE_NOT_SUPPORTED"


async def test_the_tutorials_dservice_serves_in_the_sandbox(env: Env) -> None:
    listed = {d["name"]: d for d in env.sandbox.current()["dservices"]}
    assert listed["hello"]["descriptor"] == str(env.hello_dir / "dservice.toml")
    assert listed["httpapp"]["version"] == "1.0.0"
    answer = await _via(env, Case("hello", b"GET", b"/"), dservice=b"/v1/dservices/hello")
    assert answer.status == 200, answer
    data = json.loads(answer.body)
    assert data["greeting"] == "Hello from hello"
    assert data["base_url"] == f"http://{_gateway_host(env).decode()}/v1/dservices/hello"
    echoed = await _via(
        env,
        Case("echo", b"POST", b"/echo", _with_length([], b"bytes \x00\xff"), b"bytes \x00\xff"),
        dservice=b"/v1/dservices/hello",
    )
    assert echoed.body == b"bytes \x00\xff"
    # Its output is in the miner's log, tagged with its name.
    log = (env.sandbox.state_dir / "logs" / "miner-1.log").read_text()
    lines = [json.loads(x) for x in log.splitlines() if '"dservice_output"' in x]
    assert any(x["dservice"] == "hello" and "listening on" in x["line"] for x in lines)
    assert any(x["dservice"] == "hello" and '"POST /echo' in x["line"] for x in lines)
