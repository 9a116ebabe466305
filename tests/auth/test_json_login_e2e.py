"""``json_login`` end to end: the xTrace emulator and the sandbox Keycloak, each logged in to
through config alone, behind a real sidecar."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack, TlsServer
from sidecar.sandbox.xtrace import XTRACE_HOST, XtraceApi, start_xtrace, xtrace_upstream
from tests.helpers.load import run_load
from tests.helpers.sidecars import SidecarFactory, proxy_url

API = f"http://{XTRACE_HOST}/api/v1"
NTB = "http://api.moex.com/ntb"


class Xtrace:
    def __init__(self, api: XtraceApi, server: TlsServer, config: dict[str, Any]) -> None:
        self.api, self.server, self.config = api, server, config


@pytest.fixture
async def xtrace(sandbox: SandboxStack, tmp_path: Path) -> AsyncIterator[Xtrace]:
    api, server = await start_xtrace(sandbox.pki)
    password = tmp_path / "xtrace-password"
    password.write_text(api.users["sandbox-user"] + "\n")
    config = xtrace_upstream(api, server.url, str(sandbox.pki.ca_file), str(password))
    config["timeouts"] = {"token_wait": 5}
    try:
        yield Xtrace(api, server, config)
    finally:
        await server.stop()


async def _get(session: aiohttp.ClientSession, sidecar: Sidecar, path: str,
               **kw: Any) -> tuple[int, Any]:
    async with session.get(API + path, proxy=proxy_url(sidecar), **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_xtrace_login_forced_accept_and_replay_after_a_401(
    xtrace: Xtrace, make_sidecar: SidecarFactory
) -> None:
    with structlog.testing.capture_logs() as events:
        sidecar = await make_sidecar(upstreams={"xtrace": xtrace.config})
        async with aiohttp.ClientSession() as session:
            # The app asks for JSON; xTrace would answer 406: the sidecar forces */*.
            status, seen = await _get(session, sidecar, "/codes",
                                      headers={"Accept": "application/json"})
            assert status == 200, seen
            assert seen["headers"]["accept"] == "*/*" and seen["login"] == "sandbox-user"
            token = seen["headers"]["authorization"].removeprefix("Bearer ")
            assert xtrace.api.is_token_valid(token)
            # The API forgets the token: the 401 is replayed with a fresh one.
            xtrace.api.expire_tokens()
            status, seen = await _get(session, sidecar, "/codes")
            assert status == 200, seen
            assert seen["headers"]["authorization"] != f"Bearer {token}"
    stats = xtrace.api.stats()
    assert stats["unauthorized"] == 1 and stats["not_acceptable"] == 0
    assert stats["logins"] + stats["refreshes"] == 2
    text = json.dumps(events, default=str)
    for secret in [*xtrace.api.issued, xtrace.api.users["sandbox-user"]]:
        assert secret not in text


async def test_xtrace_refreshes_ahead_of_a_scaled_down_lifetime(
    xtrace: Xtrace, make_sidecar: SidecarFactory
) -> None:
    # 30 minutes scaled down to 3 s: expiresIn "3000" (ms, a string) drives the renewal.
    xtrace.api.access_ttl = 3
    sidecar = await make_sidecar(upstreams={"xtrace": xtrace.config})
    statuses: list[int] = []
    deadline = time.monotonic() + 7
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            statuses.append((await _get(session, sidecar, "/codes"))[0])
            await asyncio.sleep(0.05)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    stats = xtrace.api.stats()
    assert stats["logins"] == 1
    assert stats["refreshes"] >= 2  # the refresh token, rotated each time, kept working
    assert stats["refresh_rejected"] == 0 and stats["unauthorized"] == 0


async def test_xtrace_wrong_password_is_refused_with_the_api_reason(
    xtrace: Xtrace, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    xtrace.config["auth"]["password_file"] = str(wrong)
    sidecar = await make_sidecar(upstreams={"xtrace": xtrace.config})
    async with aiohttp.ClientSession() as session:
        status, body = await _get(session, sidecar, "/codes")
    assert status == 503 and body["error"] == "no_token"
    assert "401" in body["message"] and "Invalid login or password" in body["message"]
    assert "not-the-password" not in body["message"]


def keycloak_json_login(sandbox: SandboxStack, password_file: str) -> dict[str, Any]:
    """The Keycloak password grant as json_login: what oidc_password does, in config."""
    user = next(iter(sandbox.idp.users))
    client = {"client_id": "LK_NTB_PUBLIC"}
    return {
        "type": "json_login",
        "username": user,
        "password_file": password_file,
        "login": {"url": sandbox.token_url, "form": {
            "grant_type": "password", **client, "username": "{username}",
            "password": "{password}", "scope": "openid email profile"}},
        "refresh": {"url": sandbox.token_url, "form": {
            "grant_type": "refresh_token", **client, "refresh_token": "{refresh_token}"}},
        "answer": {"token": "/access_token", "refresh_token": "/refresh_token",
                   "expires_in": "/expires_in", "refresh_expires_in": "/refresh_expires_in"},
        "failure": {"refused": {"body_contains": ['"invalid_grant"']}},
        "backoff_cap": 0.5,
    }


@pytest.mark.parametrize("flow", ["oidc_password", "json_login"])
async def test_keycloak_short_tokens_with_rotation_same_as_oidc_password(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, sidecar_config: dict[str, Any],
    flow: str,
) -> None:
    # Access tokens live 2 s, refresh tokens 5 s and are single use (rotation), the session
    # ends after 5 s: refreshes every second, a full login every 5 s, and no failed request.
    sandbox.idp.access_ttl = 2
    sandbox.idp.refresh_ttl = 5
    sandbox.idp.session_max = 5
    sandbox.idp.revoke_refresh_token = True
    auth = sidecar_config["upstreams"]["moex-ntb"]["auth"]
    if flow == "json_login":
        sidecar_config["upstreams"]["moex-ntb"]["auth"] = keycloak_json_login(
            sandbox, auth["password_file"]
        )
    sidecar = await make_sidecar()
    result = await run_load(proxy_url(sidecar), f"{NTB}/load", clients=4, duration=8)
    assert result.total > 50
    assert result.non_2xx == 0, (result.statuses, result.errors[:3])
    stats = sandbox.idp.stats()
    assert stats["by_grant"].get("refresh_token", 0) >= 3
    assert 2 <= stats["by_grant"].get("password", 0) <= 4
    assert stats["max_concurrent"] == 1
    assert sandbox.ntb.stats()["rejected"] == 0
