"""A browser DApp through the sandbox gateway, in headless Chromium (Debian's ``chromium``,
driven by Playwright; never Playwright's own browser download).

Two pages are served from two origins on loopback (the same address, two ports); the sandbox
starts with ``--cors-origin`` naming the first. The page from the allowed origin opens a
session and calls the echo DService with ``fetch``; the same page from the other origin is
refused by the browser (the gateway refuses its preflight). Each page's console output and a
screenshot are kept under the test's tmp directory, whose path the test prints."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from playwright.sync_api import ConsoleMessage, sync_playwright

from tests.helpers.sandbox import RunningSandbox, start_sandbox, stop_sandbox

CHROMIUM = "/usr/bin/chromium"
#: Debian's Chromium, headless as NOTES.md says (no sandbox as root, no GPU, no phoning home).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PAGE_TIMEOUT_MS = 30_000

#: The DApp page: open a session, call echo, report what happened in ``window.result``. The
#: credentials travel in the URL's fragment, which the browser never sends to a server.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>CGN DApp</title><link rel="icon" href="data:,"></head>
<body><h1>CGN DApp</h1><pre id="out">running</pre>
<script>
async function run() {
  const p = new URLSearchParams(location.hash.slice(1));
  const gw = p.get("gw");
  const out = {origin: location.origin};
  try {
    const s = await fetch(gw + "/v1/sessions", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({account_id: p.get("account"), api_key: p.get("key")}),
    });
    out.session_status = s.status;
    const token = (await s.json()).token;
    console.log("session opened: HTTP " + s.status);
    const r = await fetch(gw + "/v1/dservices/echo/from-browser?page=1", {
      method: "PUT",
      headers: {"Authorization": "Bearer " + token, "Content-Type": "text/plain"},
      body: "hello from " + location.origin,
    });
    out.call_status = r.status;
    out.body = await r.text();
    out.request_id = r.headers.get("X-Request-Id");
    console.log("echo answered: HTTP " + r.status + " " + out.body);
  } catch (e) {
    out.error = String(e);
    console.log("refused: " + e);
  }
  document.getElementById("out").textContent = JSON.stringify(out, null, 2);
  window.result = out;
}
run();
</script></body></html>
"""


class _PageServer:
    """A static page server on 127.0.0.1 in a thread; its origin is known before it serves."""

    def __init__(self, root: Path) -> None:
        handler = partial(_QuietHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(allowed origin, other origin), each serving ``dapp.html``."""
    root = tmp_path_factory.mktemp("dapp-pages")
    (root / "dapp.html").write_text(PAGE)
    with _PageServer(root) as allowed, _PageServer(root) as other:
        yield allowed.origin, other.origin


@pytest.fixture(scope="module")
def cors_sandbox(
    tmp_path_factory: pytest.TempPathFactory, origins: tuple[str, str]
) -> Iterator[RunningSandbox]:
    base = tmp_path_factory.mktemp("cors-sandbox")
    running = start_sandbox(
        base / "state", base / "sandbox.log", miners=1, dservices="echo", cors_origins=origins[:1]
    )
    try:
        yield running
    finally:
        stop_sandbox(running.process)


def _chromium_children() -> set[int]:
    return {
        p.pid
        for p in psutil.Process(os.getpid()).children(recursive=True)
        if "chrom" in p.name().lower()
    }


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is missing: scripts/bootstrap"
)
def test_a_page_from_an_allowed_origin_calls_a_dservice_and_another_is_refused(
    cors_sandbox: RunningSandbox,
    origins: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    artifacts = tmp_path_factory.mktemp("browser-artifacts")
    print(f"browser artifacts (screenshots, console logs): {artifacts}")
    fragment = (
        f"gw={cors_sandbox.url}&account={cors_sandbox.info['account_id']}"
        f"&key={cors_sandbox.info['api_key']}"
    )
    results: dict[str, dict[str, Any]] = {}
    consoles: dict[str, list[str]] = {}
    before = _chromium_children()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for name, origin in zip(("allowed", "other"), origins, strict=True):
                page = browser.new_page()
                lines = consoles[name] = []

                def keep(message: ConsoleMessage, lines: list[str] = lines) -> None:
                    lines.append(f"{message.type}: {message.text}")

                page.on("console", keep)
                page.goto(f"{origin}/dapp.html#{fragment}", timeout=PAGE_TIMEOUT_MS)
                page.wait_for_function("window.result !== undefined", timeout=PAGE_TIMEOUT_MS)
                results[name] = page.evaluate("window.result")
                page.screenshot(path=str(artifacts / f"{name}.png"))
                (artifacts / f"{name}-console.log").write_text("\n".join(lines) + "\n")
                page.close()
        finally:
            browser.close()
    (artifacts / "results.json").write_text(json.dumps(results, indent=2))
    allowed, other = results["allowed"], results["other"]
    assert allowed == {
        "origin": origins[0],
        "session_status": 200,
        "call_status": 200,
        "body": f"hello from {origins[0]}",
        "request_id": allowed["request_id"],
    }, consoles["allowed"]
    assert allowed["request_id"]  # an exposed header the page's script could read
    assert other["origin"] == origins[1]
    assert other["error"] == "TypeError: Failed to fetch", consoles["other"]
    assert "session_status" not in other
    assert any("CORS policy" in line for line in consoles["other"]), consoles["other"]
    assert cors_sandbox.info["api_key"] not in "".join(consoles["allowed"] + consoles["other"])
    # The browser is gone with its helpers: nothing of Chromium outlives the test.
    assert _chromium_children() - before == set()
