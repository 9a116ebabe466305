"""Refused refreshes and refused logins, end to end: sandbox Keycloak over TLS, the sidecar,
its admin endpoint and a reload of the secret file."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from sidecar.app import Sidecar
from sidecar.config import load_config
from sidecar.reload import Reloader
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url

NTB = "http://api.moex.com/ntb"


def grants(sandbox: SandboxStack) -> list[tuple[str | None, int | None]]:
    return [(e["grant"], e["status"]) for e in sandbox.idp.stats()["events"]]


async def test_a_refresh_answered_403_is_followed_by_a_login(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sandbox.idp.access_ttl = 2  # renewal (a refresh) at 1 s left
    sidecar = await make_sidecar()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{NTB}/hello", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 200
    sandbox.idp.reset_stats()
    sandbox.idp.fail_with(403, count=1)
    await asyncio.sleep(1.6)
    # Before: the same refresh token again and again, and no login until it expired.
    assert grants(sandbox)[:2] == [("refresh_token", 403), ("password", 200)]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{NTB}/hello", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 200


async def status_of(sidecar: Sidecar) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/status") as resp:
            body: dict[str, Any] = await resp.json()
    return body["upstreams"]["moex-ntb"]["token"]


async def test_a_wrong_password_is_tried_rarely_and_a_fixed_secret_at_once(
    sandbox: SandboxStack, sidecar_config: dict[str, Any], tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("wrong")
    config = copy.deepcopy(sidecar_config)
    auth = config["upstreams"]["moex-ntb"]["auth"]
    auth.pop("password", None)
    auth["password_file"] = str(secret)
    auth["refused_backoff"] = 2  # 30 s by default: shortened so the test counts in seconds
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump(config))
    sandbox.idp.reset_stats()

    sidecar = Sidecar(load_config(config_file))
    await sidecar.start()
    reloader = Reloader(sidecar, config_file, interval=0.1)
    reloader.start()
    try:
        await asyncio.sleep(3.5)
        # Before: the transient backoff (0.5, 1, 2 s ...): 4 logins in 3.5 s, 16 a minute.
        attempts = grants(sandbox)
        assert attempts and all(a == ("password", 401) for a in attempts)
        assert len(attempts) <= 2, attempts
        token = await status_of(sidecar)
        assert token["credentials_refused"] is True
        assert token["next_attempt_in"] > 0
        assert "Invalid user credentials" in token["last_error"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{NTB}/hello", proxy=proxy_url(sidecar)) as resp:
                assert resp.status == 503
                assert "refused the credentials" in (await resp.json())["message"]

        secret.write_text(next(iter(sandbox.idp.users.values())))  # the right one
        for _ in range(50):  # the reload builds a new manager, which logs in at once
            if (await status_of(sidecar))["state"] == "valid":
                break
            await asyncio.sleep(0.1)
        token = await status_of(sidecar)
        assert token["state"] == "valid" and token["credentials_refused"] is False
    finally:
        await reloader.stop()
        await sidecar.stop(grace=1.0)
