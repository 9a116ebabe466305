"""The token rules (docs/protocols.md, "Token manager rules"), end to end: sandbox Keycloak
over TLS, sidecar, real clients."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import aiohttp

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.load import run_load
from tests.helpers.sidecars import SidecarFactory, proxy_url

NTB = "http://api.moex.com/ntb"


def _overlaps(events: list[dict[str, object]]) -> int:
    """Most IdP calls in progress at one instant, from the IdP's own event log."""
    points = sorted(
        [(float(e["start"]), 1) for e in events] + [(float(e["end"]), -1) for e in events],  # type: ignore[arg-type]
        key=lambda p: (p[0], p[1]),
    )
    depth = peak = 0
    for _, step in points:
        depth += step
        peak = max(peak, depth)
    return peak


async def test_cold_start_burst_makes_one_token_request(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sandbox.idp.latency = 0.3  # the login is slow, so all 500 requests wait on it
    sidecar = await make_sidecar({"eager": False})
    sandbox.idp.reset_stats()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> int:
            async with session.get(f"{NTB}/burst/{i}", proxy=proxy_url(sidecar)) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one(i) for i in range(500)))
    assert statuses.count(200) == 500
    assert sandbox.idp.stats()["calls"] == 1
    assert sandbox.ntb.stats()["requests"] == 500


async def test_short_tokens_under_load_never_fail(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    # Access tokens live 2 s, refresh tokens 6 s (the SSO session ends then, too), so the
    # sidecar must refresh every second and log in again every 6 s.
    sandbox.idp.access_ttl = 2
    sandbox.idp.refresh_ttl = 6
    sandbox.idp.session_max = 6
    sidecar = await make_sidecar()
    result = await run_load(proxy_url(sidecar), f"{NTB}/load", clients=20, duration=15)

    assert result.total > 200
    assert result.non_2xx == 0, (result.statuses, result.errors[:3])
    assert result.body_mismatches == 0
    stats = sandbox.idp.stats()
    assert stats["by_grant"].get("refresh_token", 0) >= 5
    assert stats["by_grant"].get("password", 0) >= 3  # the first login plus re-logins
    assert stats["max_concurrent"] == 1
    assert _overlaps(stats["events"]) == 1


async def test_revoked_session_is_invisible_to_clients(
    sandbox: SandboxStack, sidecar: Sidecar
) -> None:
    load = asyncio.create_task(
        run_load(proxy_url(sidecar), f"{NTB}/revoke-load", clients=10, duration=4)
    )
    await asyncio.sleep(1.5)
    sandbox.idp.revoke_sessions()
    result = await load
    assert result.non_2xx == 0, (result.statuses, result.errors[:3])
    assert result.body_mismatches == 0
    assert result.statuses[200] > 50


async def test_burst_after_revocation_causes_one_login_and_replays_bodies(
    sandbox: SandboxStack, sidecar: Sidecar
) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async with session.get(f"{NTB}/warm", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 200
        sandbox.idp.revoke_sessions()
        sandbox.idp.reset_stats()
        sandbox.ntb.reset_stats()

        async def post(i: int) -> tuple[int, bool]:
            body = os.urandom(2048 + i)
            async with session.post(
                f"{NTB}/replay/{i}", data=body, proxy=proxy_url(sidecar)
            ) as resp:
                seen = await resp.json()
                return resp.status, seen.get("body_sha256") == hashlib.sha256(body).hexdigest()

        results = await asyncio.gather(*(post(i) for i in range(50)))
    assert [s for s, _ in results] == [200] * 50
    assert all(same for _, same in results)
    by_grant = sandbox.idp.stats()["by_grant"]
    assert by_grant.get("password") == 1, by_grant
    # Those sent with the revoked token were answered 401 and replayed with a fresh one.
    api = sandbox.ntb.stats()
    assert api["requests"] == 50
    assert api["rejected"] >= 10, api


async def test_idp_down_without_token_answers_503_fast(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    await sandbox.idp_server.stop()
    sidecar = await make_sidecar({"timeouts": {"token_wait": 3}})
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.get(f"{NTB}/x", proxy=proxy_url(sidecar)) as resp:
            body = await resp.json()
            elapsed = time.monotonic() - started
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
    assert elapsed < 3.5
    assert body["error"] == "no_token"
    assert body["upstream"] == "moex-ntb"
    assert "cannot connect" in body["message"]
    assert sandbox.ntb.stats()["requests"] == 0  # nothing was sent without a token


async def test_idp_down_with_valid_token_keeps_serving_then_recovers(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sandbox.idp.access_ttl = 3
    sidecar = await make_sidecar({"auth": {"backoff_cap": 1.0}})
    async with aiohttp.ClientSession() as session:

        async def status() -> int:
            async with session.get(f"{NTB}/y", proxy=proxy_url(sidecar)) as resp:
                await resp.read()
                return resp.status

        assert await status() == 200
        await sandbox.idp_server.stop()
        # The token stays valid for a while: requests still pass while renewals fail.
        assert await status() == 200
        await asyncio.sleep(3.2)  # now the token has expired and the IdP is still down
        started = time.monotonic()
        assert await status() == 503
        assert time.monotonic() - started < 2.0
        await sandbox.idp_server.start()  # back, same port: no sidecar restart
        deadline = time.monotonic() + 5
        codes = []
        while time.monotonic() < deadline:
            codes.append(await status())
            if codes[-1] == 200:
                break
            await asyncio.sleep(0.2)
        assert codes[-1] == 200, codes
