"""Sidecars that share one credential through a real Redis: one login for all, one login
after a burst of 401s, upstreams of one process sharing a record, nothing readable at rest,
and a key rotated without a cold login. Several sidecars run in this test's event loop: each
is a whole Sidecar with its own listeners, token managers and store connection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url
from tests.store.conftest import RedisServer, write_key

NTB = "http://api.moex.com/ntb/"


async def _get_many(sidecars: list[Sidecar], each: int) -> list[int]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(sidecar: Sidecar, i: int) -> int:
            async with session.get(f"{NTB}item/{i}", proxy=proxy_url(sidecar)) as resp:
                await resp.read()
                return resp.status

        return await asyncio.gather(*(one(s, i) for s in sidecars for i in range(each)))


def _grants(sandbox: SandboxStack) -> dict[str, int]:
    return dict(sandbox.idp.stats()["by_grant"])


async def _start(make_sidecar: SidecarFactory, count: int, **top: Any) -> list[Sidecar]:
    return list(await asyncio.gather(*(make_sidecar(**top) for _ in range(count))))


async def test_three_cold_sidecars_log_in_once(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, store_config: dict[str, Any]
) -> None:
    sandbox.idp.latency = 0.3  # every replica asks while the first login is under way
    sidecars = await _start(make_sidecar, 3, store=store_config)
    statuses = await _get_many(sidecars, 100)
    assert statuses == [200] * 300
    assert _grants(sandbox) == {"password": 1}
    tokens = {s.upstreams["moex-ntb"].tokens.peek().value for s in sidecars}  # type: ignore[union-attr]
    assert len(tokens) == 1


async def test_a_burst_of_401s_on_three_replicas_causes_one_renewal(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, store_config: dict[str, Any]
) -> None:
    sidecars = await _start(make_sidecar, 3, store=store_config)
    assert await _get_many(sidecars, 5) == [200] * 15
    before = _grants(sandbox)
    sandbox.idp.revoke_sessions()  # every token (and refresh token) dies at once
    statuses = await _get_many(sidecars, 30)
    assert statuses == [200] * 90  # replayed with the one new token
    after = _grants(sandbox)
    calls = {g: after.get(g, 0) - before.get(g, 0) for g in after}
    # The session is gone: the one lease holder's refresh is refused, then it logs in once.
    assert calls.get("password") == 1, calls
    assert calls.get("refresh_token", 0) <= 1, calls


async def test_two_upstreams_of_one_process_with_one_credential_share_one_token(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, store_config: dict[str, Any],
    sidecar_config: dict[str, Any],
) -> None:
    twin = dict(sidecar_config["upstreams"]["moex-ntb"]) | {"match": ["api2.moex.com"]}
    sidecar = await make_sidecar(store=store_config, upstreams={"ntb-twin": twin})
    await asyncio.sleep(0.5)
    first = await sidecar.upstreams["moex-ntb"].tokens.get()
    second = await sidecar.upstreams["ntb-twin"].tokens.get()
    assert first.value == second.value
    assert _grants(sandbox) == {"password": 1}


async def test_redis_holds_no_token_secret_or_user_name_in_clear(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, store_config: dict[str, Any],
    sidecar_config: dict[str, Any], redis_server: RedisServer,
) -> None:
    sidecars = await _start(make_sidecar, 2, store=store_config)
    assert await _get_many(sidecars, 3) == [200] * 6
    manager: Any = sidecars[0].upstreams["moex-ntb"].tokens
    auth = sidecar_config["upstreams"]["moex-ntb"]["auth"]
    secrets = [
        manager.peek().value, manager._refresh_token, auth["username"], auth["client_id"],
        sandbox.idp.users[auth["username"]],
    ]
    assert all(secrets)
    dump = await redis_server.dump()
    assert dump, "nothing shared"
    text = repr(dump)
    for secret in secrets:
        for probe in {secret, secret[:12], secret[-12:]}:
            assert probe not in text


async def test_a_rotated_key_reads_the_old_record_without_a_login(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, store_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    first = await make_sidecar(store=store_config)
    await first.upstreams["moex-ntb"].tokens.get()
    old_key = store_config["encryption_key_file"]
    rotated = store_config | {
        "encryption_key_file": str(write_key(tmp_path / "new-key")),
        "previous_key_files": [old_key],
    }
    second = await make_sidecar(store=rotated)
    token = await second.upstreams["moex-ntb"].tokens.get()
    assert token.value == first.upstreams["moex-ntb"].tokens.peek().value  # type: ignore[union-attr]
    assert _grants(sandbox) == {"password": 1}
