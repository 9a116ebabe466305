"""The rate limit and the 429 pause of an account, shared by replicas: the registration API
(1 request a second per client, 429 above it) never sees two requests within one second."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.config import validate_config
from sidecar.config.models import RateLimit
from sidecar.proxy.ratelimit import RateLimited, RateLimiter
from sidecar.sandbox.demo import moex_registration_upstream
from sidecar.sandbox.moex import MoexStack
from sidecar.sandbox.servers import SandboxStack
from sidecar.store.shared import SharedRedisStore
from tests.helpers.samples import APPLICATIONS, document
from tests.helpers.sidecars import SidecarFactory, proxy_url


async def test_three_replicas_keep_one_registration_a_second_between_them(
    sandbox: SandboxStack, moex: MoexStack, make_sidecar: SidecarFactory,
    store_config: dict[str, Any], tmp_path: Path,
) -> None:
    upstream = moex_registration_upstream(moex, sandbox.token_url, sandbox.pki, tmp_path / "m")
    sidecars = list(await asyncio.gather(*(
        make_sidecar(store=store_config, upstreams={"registration": upstream})
        for _ in range(3)
    )))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def post(sidecar: Any, n: int) -> int:
            async with session.post(APPLICATIONS, data=document(n), proxy=proxy_url(sidecar),
                                    headers={"Content-Type": "application/xml"}) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(
            *(post(s, 500 + 10 * k + i) for k, s in enumerate(sidecars) for i in range(4))
        )
    stats = moex.registration.stats()
    arrivals = sorted(stats["arrivals"])
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    print(f"statuses={sorted(statuses)} rate_limited={stats['rate_limited']} "
          f"smallest_gap={min(gaps):.3f}s")
    assert statuses == [202] * 12
    assert stats["rate_limited"] == 0 and stats["accepted"] == 12
    assert min(gaps) >= 1.0, gaps


def _store(store_config: dict[str, Any]) -> SharedRedisStore:
    config = validate_config({
        "store": store_config,
        "upstreams": {"a": {"match": ["a.example"], "target": "https://a.example",
                            "auth": {"type": "static", "token": "x"}}},
    })
    return SharedRedisStore(config.store)


async def test_a_429_seen_by_one_replica_pauses_the_other(store_config: dict[str, Any]) -> None:
    stores = [_store(store_config), _store(store_config)]
    limiters = []
    upstream: Any = validate_config({"upstreams": {"a": {
        "match": ["a.example"], "target": "https://a.example",
        "auth": {"type": "static", "token": "x"}}}}).upstreams["a"]
    for store in stores:
        await store.start()
        limiter = RateLimiter(RateLimit(rps=20, burst=1, max_wait=1.5))
        slots = store.shared_limit(upstream, limiter.shared_interval(), 1, limiter.pause_here)
        assert slots is not None
        limiter.share(slots)
        limiters.append(limiter)
    try:
        await limiters[1].acquire()
        limiters[0].pause(1.0)  # replica 0 got a 429 asking for a second
        await asyncio.sleep(0.1)  # the pause reaches replica 1 on the channel
        assert limiters[1].paused_for > 0.5
        started = time.monotonic()
        await limiters[1].acquire()
        waited = time.monotonic() - started
        assert waited >= 0.75, waited  # it left after the pause, not at its old slot
        limiters[0].pause(3.0)  # longer than max_wait: refused at once, not queued
        await asyncio.sleep(0.1)
        with pytest.raises(RateLimited):
            await limiters[1].acquire()
    finally:
        for limiter in limiters:
            await limiter.close()
        for store in stores:
            await store.close()
