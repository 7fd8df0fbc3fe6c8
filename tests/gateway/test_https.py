"""The gateway serves HTTPS to DApps when it is given a certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from cgn_common.certs import Role
from gateway.config import GatewayConfig
from gateway.server import start
from tests.helpers.pki import Pki


async def test_https_when_given_a_certificate(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    link = pki.issue(Role.GATEWAY, "gw")
    https = pki.issue(Role.GATEWAY, "public-name")  # any server certificate will do here
    config = GatewayConfig(
        listen="127.0.0.1:0",
        node_address="127.0.0.1:1",
        tls_cert_file=link.cert_file,
        tls_key_file=link.key_file,
        tls_ca_file=link.ca_file,
        https_cert_file=https.cert_file,
        https_key_file=https.key_file,
    )
    runner, node, url = await start(config)
    try:
        assert url.startswith("https://")
        trust = ssl.create_default_context(cafile=pki.ca_file)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz", ssl=trust) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with http.get(url.replace("https://", "http://") + "/healthz") as response:
                    await response.read()
    finally:
        await runner.cleanup()
        await node.close()
