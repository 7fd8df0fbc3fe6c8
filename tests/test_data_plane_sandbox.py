"""Bodies on the data plane, through the real processes of the sandbox: a body too large to go
inline reaches the DService whole (the miner fetched it on the dispatch's data plane; were
it not, the DService would see an empty body) and its answer comes back whole, while small
requests on the same miners keep being answered."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os

import aiohttp

from tests.helpers.sandbox import RunningSandbox


async def test_a_large_body_goes_both_ways_while_small_requests_keep_flowing(
    sandbox: RunningSandbox,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{sandbox.url}/v1/sessions",
            json={"account_id": sandbox.info["account_id"], "api_key": sandbox.info["api_key"]},
        ) as response:
            token = (await response.json())["token"]
        auth = {"Authorization": f"Bearer {token}"}
        body = os.urandom(24 * 1024 * 1024)

        async def large() -> bytes:
            async with http.post(
                f"{sandbox.url}/v1/dservices/echo/large", data=io.BytesIO(body), headers=auth
            ) as answer:
                assert answer.status == 200, await answer.text()
                return await answer.read()

        async def small(n: int) -> int:
            async with http.get(
                f"{sandbox.url}/v1/dservices/echo/small/{n}", headers=auth
            ) as answer:
                await answer.read()
                return answer.status

        big = asyncio.create_task(large())
        statuses = await asyncio.gather(*(small(n) for n in range(40)))
        echoed = await asyncio.wait_for(big, 60)
    assert statuses == [200] * 40
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(body).hexdigest()
