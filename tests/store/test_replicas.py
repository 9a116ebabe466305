"""Replicas as operators run them: `sidecar run` processes sharing one credential through a
real Redis. KISC under load with 3 s tokens (WSO2 rotates refresh tokens and revokes the old
access token on refresh), and a lease holder killed in the middle of its login."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.sandbox.servers import SandboxStack
from tests.helpers.process import SidecarProcess
from tests.helpers.samples import MESSAGES, PACS_008
from tests.helpers.sidecars import Kisc, deep_merge
from tests.store.conftest import RedisServer

LOAD_SECONDS = 8.0


async def _replicas(config: dict[str, Any], tmp_path: Path, count: int,
                    tag: str) -> list[SidecarProcess]:
    procs = []
    for i in range(count):
        workdir = tmp_path / f"{tag}-{i}"
        workdir.mkdir()
        procs.append(SidecarProcess(config, workdir))
    await asyncio.gather(*(p.start() for p in procs))
    return procs


async def _kisc_load(procs: list[SidecarProcess], tag: str) -> list[int]:
    statuses: list[int] = []
    deadline = time.monotonic() + LOAD_SECONDS
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                proxy = f"http://{procs[(n + i) % len(procs)].proxy}"
                headers = {"Content-Type": "application/xml", "Accept": "application/xml",
                           "x-idempotency-key": f"{tag}-{n}-{i}"}
                async with session.post(MESSAGES, data=PACS_008, headers=headers,
                                        proxy=proxy) as resp:
                    await resp.read()
                    statuses.append(resp.status)
                async with session.get(MESSAGES, proxy=proxy) as resp:
                    await resp.read()
                    statuses.append(resp.status)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(client(n) for n in range(6)))
    return statuses


async def test_kisc_three_replicas_share_one_token_under_load(
    kisc: Kisc, sidecar_config: dict[str, Any], kisc_config: dict[str, Any],
    store_config: dict[str, Any], tmp_path: Path,
) -> None:
    kisc.gateway.access_ttl = 3
    base = deep_merge(sidecar_config, {"upstreams": {"kisc": kisc_config}})
    figures: dict[str, dict[str, Any]] = {}
    for tag, count, top in (("one", 1, {}), ("three", 3, {"store": store_config})):
        kisc.gateway.expire_tokens()
        kisc.gateway.reset_stats()
        procs = await _replicas(deep_merge(base, top), tmp_path, count, tag)
        try:
            statuses = await _kisc_load(procs, tag)
        finally:
            for proc in procs:
                await proc.kill()
        stats = kisc.gateway.stats()
        figures[tag] = {
            "requests": len(statuses),
            "errors": sum(1 for s in statuses if s not in (200, 202)),
            "idp_calls": stats["calls"], "by_grant": stats["by_grant"],
            "refresh_reuse": stats["refresh_reuse"], "duplicates": stats["duplicate_posts"],
        }
    print(figures)
    one, three = figures["one"], figures["three"]
    assert three["requests"] > 200
    assert three["errors"] == 0 and one["errors"] == 0
    assert three["refresh_reuse"] == 0 and three["duplicates"] == 0
    assert three["idp_calls"] <= 1.5 * one["idp_calls"] + 1, figures


async def test_a_lease_holder_killed_mid_login_is_taken_over(
    sandbox: SandboxStack, sidecar_config: dict[str, Any], store_config: dict[str, Any],
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    sandbox.idp.latency = 2.0  # the login is still under way when its holder dies
    config = deep_merge(sidecar_config, {"store": store_config})
    (holder,) = await _replicas(config, tmp_path, 1, "holder")
    taker: SidecarProcess | None = None
    try:
        client = redis_server.client()
        try:
            deadline = time.monotonic() + 5
            while not [k async for k in client.scan_iter(match="*:lease")]:
                assert time.monotonic() < deadline, "the first replica took no lease"
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        holder.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        (taker,) = await _replicas(config, tmp_path, 1, "taker")
        assert taker is not None
        await taker.wait_for("token_obtained", timeout=15)
        took = time.monotonic() - killed_at
    finally:
        await holder.kill()
        if taker is not None:
            await taker.kill()
    grants = sandbox.idp.stats()["by_grant"]
    print(f"takeover after {took:.2f} s (lease 3 s + one 2 s login); logins={grants}")
    assert grants == {"password": 2}  # the dead holder's, then the one that took over
