"""The xTrace auth emulator over real TLS: login, refresh with rotation, the ms string
lifetime, 406 without ``Accept: */*``, 401 for a dead token, and the sandbox controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import TlsServer
from sidecar.sandbox.xtrace import LOGIN_PATH, REFRESH_PATH, XtraceApi, start_xtrace

ANY = {"Accept": "*/*"}


@dataclass
class Xtrace:
    api: XtraceApi
    server: TlsServer
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, bytes]:
        kw.setdefault("headers", ANY)
        async with self.http.request(method, self.server.url + path, **kw) as resp:
            return resp.status, await resp.read()

    async def login(self, password: str = "sandbox-password") -> tuple[int, Any]:
        async with self.http.post(self.server.url + LOGIN_PATH, headers=ANY,
                                  json={"login": "sandbox-user", "password": password}) as resp:
            return resp.status, await resp.json(content_type=None)

    async def refresh(self, token: str) -> tuple[int, Any]:
        async with self.http.post(self.server.url + REFRESH_PATH, headers=ANY,
                                  data={"refreshToken": token}) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def xtrace(tmp_path: Path) -> AsyncIterator[Xtrace]:
    pki = Pki(tmp_path / "pki")
    api, server = await start_xtrace(pki)
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=pki.client_ssl_context())
    )
    try:
        yield Xtrace(api, server, http)
    finally:
        await http.close()
        await server.stop()


async def test_login_gives_a_pair_with_the_lifetime_as_a_millisecond_string(
    xtrace: Xtrace,
) -> None:
    status, body = await xtrace.login()
    assert status == 200
    assert body["expiresIn"] == "1800000"
    bearer = {**ANY, "Authorization": f"Bearer {body['accessToken']}"}
    status, seen = await xtrace.call("GET", "/api/v1/codes", headers=bearer)
    assert status == 200 and b'"login": "sandbox-user"' in seen
    assert (await xtrace.login("wrong"))[0] == 401
    stats = xtrace.api.stats()
    assert stats["logins"] == 1 and stats["refused"] == 1 and stats["requests"] == 1


async def test_refresh_rotates_and_a_used_refresh_token_is_dead(xtrace: Xtrace) -> None:
    _, first = await xtrace.login()
    status, second = await xtrace.refresh(first["refreshToken"])
    assert status == 200 and second["refreshToken"] != first["refreshToken"]
    assert (await xtrace.refresh(first["refreshToken"]))[0] == 401  # single use
    assert (await xtrace.refresh(second["refreshToken"]))[0] == 200
    # JSON is not what the refresh endpoint takes: it is form-encoded.
    async with xtrace.http.post(xtrace.server.url + REFRESH_PATH, headers=ANY,
                                json={"refreshToken": "x"}) as resp:
        assert resp.status == 415
    assert xtrace.api.stats()["refreshes"] == 2


async def test_without_accept_any_the_answer_is_406_with_an_empty_body(xtrace: Xtrace) -> None:
    _, body = await xtrace.login()
    bearer = {"Authorization": f"Bearer {body['accessToken']}"}
    for accept in (None, "application/json"):
        headers = bearer if accept is None else {**bearer, "Accept": accept}
        # aiohttp sends "Accept: */*" unless told not to
        status, raw = await xtrace.call("GET", "/api/v1/codes", headers=headers,
                                        skip_auto_headers=["Accept"])
        assert (status, raw) == (406, b"")
    assert (await xtrace.call("POST", LOGIN_PATH, headers={"Accept": "application/json"},
                              json={}))[0] == 406
    assert xtrace.api.stats()["not_acceptable"] == 3


async def test_expired_or_unknown_token_is_401(xtrace: Xtrace) -> None:
    _, body = await xtrace.login()
    bearer = {**ANY, "Authorization": f"Bearer {body['accessToken']}"}
    assert xtrace.api.expire_tokens() == 1
    assert (await xtrace.call("GET", "/api/v1/codes", headers=bearer))[0] == 401
    assert (await xtrace.call("GET", "/api/v1/codes"))[0] == 401
    assert xtrace.api.stats()["unauthorized"] == 2
    # The refresh token outlives its access token.
    assert (await xtrace.refresh(body["refreshToken"]))[0] == 200


async def test_fail_hang_stats_and_settings_controls(xtrace: Xtrace) -> None:
    assert (await xtrace.call("POST", "/_sandbox/fail?status=503&count=1"))[0] == 200
    assert (await xtrace.login())[0] == 503
    assert (await xtrace.login())[0] == 200
    assert (await xtrace.call("POST", "/_sandbox/settings", json={"access_ttl": 2}))[0] == 200
    assert (await xtrace.login())[1]["expiresIn"] == "2000"
    assert (await xtrace.call("POST", "/_sandbox/hang?enabled=true"))[0] == 200
    pending = asyncio.ensure_future(xtrace.login())
    await asyncio.sleep(0.2)
    assert not pending.done()
    assert (await xtrace.call("POST", "/_sandbox/hang?enabled=false"))[0] == 200
    assert (await pending)[0] == 200
    status, raw = await xtrace.call("GET", "/_sandbox/stats")
    assert status == 200 and b'"logins": 3' in raw
