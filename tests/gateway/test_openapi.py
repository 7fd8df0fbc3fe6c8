"""The gateway's OpenAPI 3.1 document: what the gateway serves is the committed
``docs/openapi.json``, a real validator accepts it, it lists every route and status, and the
gateway's real error answers match its error schema."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from cgn_common.certs import Role
from gateway.app import make_app
from gateway.config import GatewayConfig
from gateway.errors import HTTP_STATUS, HTTP_STATUS_BY_REASON
from gateway.openapi import ERROR_STATUSES, rendered
from gateway.server import start
from tests.helpers.pki import Pki

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The gateway's URL and the document it serves (no node needed for either)."""
    link = Pki.create(tmp_path).issue(Role.GATEWAY, "gw")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        config = GatewayConfig(
            listen="127.0.0.1:0",
            node_address=f"127.0.0.1:{unused.getsockname()[1]}",
            tls_cert_file=link.cert_file,
            tls_key_file=link.key_file,
            tls_ca_file=link.ca_file,
        )
        runner, node, url = await start(config)
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{url}/v1/openapi.json") as response,
            ):
                assert response.status == 200
                yield url, await response.json()
        finally:
            await runner.cleanup()
            await node.close()


async def test_the_committed_document_is_what_the_gateway_serves(
    served: tuple[str, dict[str, Any]],
) -> None:
    _, document = served
    assert json.loads(COMMITTED.read_text()) == document, (
        "docs/openapi.json is stale: .venv/bin/python -m gateway.openapi > docs/openapi.json"
    )
    assert COMMITTED.read_text() == rendered()


def test_a_real_validator_accepts_the_committed_document() -> None:
    document = json.loads(COMMITTED.read_text())
    assert document["openapi"].startswith("3.1")
    validate(document)  # openapi-spec-validator; raises on any violation


def _template(path: str) -> str:
    """An aiohttp route pattern as an OpenAPI path ("{path:.*}" -> "{path}")."""
    return path.replace("{path:.*}", "{path}")


def test_every_route_and_method_of_the_app_is_documented() -> None:
    document = json.loads(COMMITTED.read_text())
    app = make_app(GatewayConfig(), node=None)  # type: ignore[arg-type]
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = _template(info.get("path") or info.get("formatter", ""))
        methods = METHODS if route.method == "*" else {route.method.lower()}
        assert path in document["paths"], path
        assert methods <= set(document["paths"][path]), (path, methods)


def test_every_status_the_cgn_answers_is_documented_with_the_error_shape() -> None:
    document = json.loads(COMMITTED.read_text())
    node_statuses = {*HTTP_STATUS.values(), *HTTP_STATUS_BY_REASON.values()} - {200}
    assert node_statuses <= set(ERROR_STATUSES)
    call = document["paths"]["/v1/dservices/{name}/{path}"]["post"]["responses"]
    assert {int(s) for s in call if s != "default"} == set(ERROR_STATUSES)
    for status in ERROR_STATUSES:
        response = document["components"]["responses"][f"E{status}"]
        assert "X-CGN-Error" in response["headers"]
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/sessions", 405),
        ("GET", "/nowhere", 404),
        ("GET", "/v1/dservices/echo/x", 401),
        ("POST", "/v1/sessions", 400),
        ("GET", "/v1/ledger/rows?page_size=many", 400),
    ],
)
async def test_real_error_answers_match_the_documented_schema(
    served: tuple[str, dict[str, Any]], method: str, path: str, status: int
) -> None:
    url, document = served
    schema = {**document["components"]["schemas"]["Error"], "components": document["components"]}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{url}{path}", data=b"{") as response,
    ):
        assert response.status == status
        assert response.headers["X-CGN-Error"] == "1"
        OAS31Validator(schema).validate(await response.json())
        documented = document["paths"].get(path.split("?")[0], {}).get(method.lower())
        if documented is not None:
            assert str(status) in documented["responses"]
