"""Redis killed mid-load and restarted on the same port: the replicas go on alone (no
failure while the IdP is healthy), say so in /status and metrics, and share again after."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url
from tests.store.conftest import RedisServer

NTB = "http://api.moex.com/ntb/"
OUTAGE = 8.0  # seconds Redis stays down: longer than a 3 s token lives, so renewals fall in it


async def _until(check: Any, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _token(sidecar: Sidecar) -> str | None:
    token = sidecar.upstreams["moex-ntb"].tokens.peek()
    return token.value if token is not None else None


async def test_redis_outage_falls_back_to_local_and_sharing_resumes(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, store_config: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    sandbox.idp.access_ttl = 3  # renewals happen during the outage
    sidecars = list(await asyncio.gather(*(make_sidecar(store=store_config) for _ in range(3))))
    results: list[tuple[int, float]] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                sidecar = sidecars[(n + i) % 3]
                started = time.monotonic()
                async with session.get(f"{NTB}o/{n}/{i}", proxy=proxy_url(sidecar)) as resp:
                    await resp.read()
                    results.append((resp.status, time.monotonic() - started))
                await asyncio.sleep(0.02)

        load = asyncio.gather(*(client(n) for n in range(6)))
        await asyncio.sleep(1.5)
        await redis_server.kill()
        killed_at, before = time.monotonic(), len(results)
        await _until(lambda: all(s.store.status()["state"] == "down" for s in sidecars)
                     or time.monotonic() - killed_at > OUTAGE)
        async with session.get(f"http://127.0.0.1:{sidecars[0].admin_port}/status") as resp:
            store = (await resp.json())["store"]
        await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - killed_at)))
        outage = len(results) - before
        await redis_server.start()  # the same port
        await _until(lambda: all(s.store.status()["state"] == "up" for s in sidecars))
        # Sharing resumes: within a renewal cycle every replica holds the one shared token.
        await _until(lambda: len({_token(s) for s in sidecars}) == 1 and _token(sidecars[0]))
        await asyncio.sleep(1.0)
        stop.set()
        await load

    assert store["state"] == "down" and store["last_error"] and store["since"]
    statuses = [status for status, _ in results]
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    assert outage > 20  # traffic went on while Redis was gone
    slowest = max(seconds for _, seconds in results)
    assert slowest < 10.0  # no request waited the token wait
    metrics = sidecars[0].metrics.registry
    assert metrics.get_sample_value("sidecar_store_up") == 1
    assert (metrics.get_sample_value("sidecar_store_errors_total", {"op": "connect"}) or 0) >= 1
    print(f"requests={len(results)} during_outage={outage} slowest={slowest:.3f}s "
          f"logins={sandbox.idp.stats()['by_grant']}")


async def test_a_hung_redis_costs_a_request_at_most_one_store_timeout(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, store_config: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    store_config = store_config | {"timeout": 0.2}  # the default: what a request may lose
    sidecar = await make_sidecar(store=store_config)
    await sidecar.upstreams["moex-ntb"].tokens.get()
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        sandbox.idp.revoke_sessions()  # the next request gets a 401: a renewal is needed
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.get(f"{NTB}hung", proxy=proxy_url(sidecar)) as resp:
                assert resp.status == 200
            took = time.monotonic() - started
            statuses = []
            for i in range(20):
                async with session.get(f"{NTB}hung/{i}", proxy=proxy_url(sidecar)) as resp:
                    statuses.append(resp.status)
        assert statuses == [200] * 20
        assert sidecar.store.status()["state"] == "down"
        print(f"401 + renewal with Redis hung took {took:.3f} s (store.timeout 0.2 s)")
        assert took < 5.0  # one store timeout and a login, never the token wait
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await _until(lambda: sidecar.store.status()["state"] == "up")
