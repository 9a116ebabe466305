"""401 storms: an API that answers 401 for something a new token does not change (a
permission) costs at most one login per replay.min_interval, not one per request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url

NTB = "http://api.moex.com/ntb"


@pytest.fixture
async def always_401() -> AsyncIterator[tuple[int, list[str]]]:
    """A plain-HTTP API that answers 401 to everything; records the tokens it saw."""
    seen: list[str] = []

    async def handle(request: web.BaseRequest) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"error": "insufficient permissions"}, status=401)

    server = await asyncio.get_running_loop().create_server(
        web.Server(handle), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


async def _ready(sidecar: Sidecar) -> None:
    for _ in range(100):  # the eager login
        if sidecar.upstreams["moex-ntb"].tokens.ready:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no token at start")


async def _metric(sidecar: Sidecar, name: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as resp:
            text = await resp.text()
    for line in text.splitlines():
        if line.startswith(f'{name}{{upstream="moex-ntb"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_twenty_401s_cost_one_login_not_twenty(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, always_401: tuple[int, list[str]]
) -> None:
    port, seen = always_401
    sidecar = await make_sidecar({"target": f"http://127.0.0.1:{port}"})
    await _ready(sidecar)
    sandbox.idp.reset_stats()
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int:
            async with session.get(f"{NTB}/forbidden/{i}", proxy=proxy_url(sidecar)) as resp:
                await resp.read()
                return resp.status

        statuses = [await one(i) for i in range(10)]  # one after another
        statuses += await asyncio.gather(*(one(i) for i in range(10, 20)))  # and all at once
    assert statuses == [401] * 20
    # The first 401 still gets a new token and the replay (a revoked token stays invisible
    # to apps); the new token's own 401s do not. Before: 20 logins.
    assert sandbox.idp.stats()["calls"] == 1, sandbox.idp.stats()["by_grant"]
    assert len(seen) == 21  # 20 requests and the one replay
    assert await _metric(sidecar, "sidecar_auth_token_rejected_again_total") == 19
    assert await _metric(sidecar, "sidecar_auth_replays_total") == 1


async def test_after_min_interval_a_rejection_gets_a_new_login_again(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, always_401: tuple[int, list[str]]
) -> None:
    port, _ = always_401
    sidecar = await make_sidecar(
        {"target": f"http://127.0.0.1:{port}", "replay": {"min_interval": 0.8}}
    )
    await _ready(sidecar)
    sandbox.idp.reset_stats()
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"{NTB}/x", proxy=proxy_url(sidecar)) as resp:
                assert resp.status == 401
        assert sandbox.idp.stats()["calls"] == 1
        await asyncio.sleep(1.0)  # the token fetched because of a 401 is now older than 0.8 s
        async with session.get(f"{NTB}/x", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 401
    assert sandbox.idp.stats()["calls"] == 2
