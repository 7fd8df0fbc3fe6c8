"""Bad input gets a clear JSON error from the gateway and crashes nothing."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import grpc
import pytest

from gateway.errors import error_response
from tests.helpers.sandbox import RunningSandbox


async def _json_error(response: aiohttp.ClientResponse, status: int, code: str) -> str:
    assert response.status == status
    assert response.headers["X-CGN-Error"] == "1"
    body: dict[str, Any] = await response.json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


async def _token(http: aiohttp.ClientSession, sandbox: RunningSandbox) -> str:
    async with http.post(
        f"{sandbox.url}/v1/sessions",
        json={"account_id": sandbox.info["account_id"], "api_key": sandbox.info["api_key"]},
    ) as response:
        assert response.status == 200
        token: str = (await response.json())["token"]
        return token


async def test_missing_and_wrong_session_tokens_are_401(sandbox: RunningSandbox) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{sandbox.url}/v1/dservices/echo/x"
        async with http.get(url) as response:
            await _json_error(response, 401, "UNAUTHENTICATED")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        token = await _token(http, sandbox)
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for bad in ("nonsense", tampered, "a.b"):
            async with http.get(url, headers={"Authorization": f"Bearer {bad}"}) as response:
                await _json_error(response, 401, "UNAUTHENTICATED")
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200


def test_a_revoked_gateway_certificate_is_502_not_the_dapps_401() -> None:
    response = error_response(
        grpc.StatusCode.UNAUTHENTICATED, "revoked", reason="CERTIFICATE_REVOKED"
    )
    assert response.status == 502
    assert "WWW-Authenticate" not in response.headers


async def test_wrong_api_key_is_401_with_the_same_message_for_unknown_accounts(
    sandbox: RunningSandbox,
) -> None:
    async with aiohttp.ClientSession() as http:
        messages = []
        for account_id in (sandbox.info["account_id"], "acct_00000000000000000000000000000000"):
            async with http.post(
                f"{sandbox.url}/v1/sessions",
                json={"account_id": account_id, "api_key": "cgnk_wrong"},
            ) as response:
                messages.append(await _json_error(response, 401, "UNAUTHENTICATED"))
        assert messages[0] == messages[1]


async def test_unknown_dservice_is_404(sandbox: RunningSandbox) -> None:
    async with aiohttp.ClientSession() as http:
        token = await _token(http, sandbox)
        async with http.get(
            f"{sandbox.url}/v1/dservices/no-such-service/x",
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            message = await _json_error(response, 404, "NOT_FOUND")
            assert "no-such-service" in message


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"account_id": 7, "api_key": "k"}', b"\xff\xfe"],
)
async def test_malformed_session_body_is_400(sandbox: RunningSandbox, body: bytes) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sandbox.url}/v1/sessions", data=body) as response,
    ):
        await _json_error(response, 400, "INVALID_ARGUMENT")


async def test_oversized_control_body_is_413(sandbox: RunningSandbox) -> None:
    # With Expect: 100-continue the 413 comes instead of the 100 and the body is never sent.
    # (A client that pushes its body regardless gets the connection reset after the 413, by
    # design (docs/gateway.md, Limits), which may reach it before the answer does.)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sandbox.url}/v1/sessions",
            data=io.BytesIO(b"{" + b" " * (1024 * 1024)),
            expect100=True,
        ) as response,
    ):
        await _json_error(response, 413, "RESOURCE_EXHAUSTED")


async def test_unknown_route_is_a_json_404(sandbox: RunningSandbox) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{sandbox.url}/nope") as response:
        await _json_error(response, 404, "NOT_FOUND")


async def test_gateway_still_serves_after_bad_input(sandbox: RunningSandbox) -> None:
    async with aiohttp.ClientSession() as http:
        token = await _token(http, sandbox)
        async with http.post(
            f"{sandbox.url}/v1/dservices/echo/",
            data=b"still here",
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 200
            assert await response.read() == b"still here"
