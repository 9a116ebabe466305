"""The Keycloak emulator over real TLS: grants, rotation, sessions, errors and controls."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest

from sidecar.sandbox.keycloak import KeycloakEmulator
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import TlsServer

PUBLIC = "LK_NTB_PUBLIC"
SECRET_CLIENT = "svc"
SECRET = "s3cret/with+chars"
LOGIN = {
    "grant_type": "password",
    "username": "trader",
    "password": "trader-password",
    "client_id": PUBLIC,
    "scope": "openid email profile",
}


@dataclass
class Idp:
    kc: KeycloakEmulator
    server: TlsServer
    http: aiohttp.ClientSession
    token_url: str

    async def post(
        self, form: dict[str, str], *, basic: tuple[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {}
        if basic is not None:
            credentials = f"{basic[0]}:{basic[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        async with self.http.post(self.token_url, data=form, headers=headers) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()

    async def login(self, **overrides: str) -> dict[str, Any]:
        status, body = await self.post({**LOGIN, **overrides})
        assert status == 200, body
        return body

    async def refresh(self, refresh_token: str, client_id: str = PUBLIC) -> tuple[int, dict]:
        return await self.post(
            {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
        )

    def control_url(self, path: str) -> str:
        return f"{self.server.url}/_sandbox/{path}"


@pytest.fixture
async def idp(tmp_path: Path) -> AsyncIterator[Idp]:
    pki = Pki(tmp_path)
    kc = KeycloakEmulator(
        clients={PUBLIC: None, "direct_access": None, SECRET_CLIENT: SECRET},
    )
    server = TlsServer(kc.app, pki.server_ssl_context(pki.issue_server("idp")))
    await server.start()
    connector = aiohttp.TCPConnector(ssl=pki.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        yield Idp(kc, server, http, server.url + kc.token_path)
    await server.stop()


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, signature = token.split(".")
    assert signature

    def decode(part: str) -> dict[str, Any]:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    return decode(header), decode(payload)


def assert_error(status: int, body: dict, want_status: int, error: str, desc: str) -> None:
    assert (status, body) == (want_status, {"error": error, "error_description": desc})


async def test_password_grant_returns_keycloak_fields(idp: Idp) -> None:
    async with idp.http.post(idp.token_url, data=LOGIN) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    assert set(body) == {
        "access_token",
        "expires_in",
        "refresh_expires_in",
        "refresh_token",
        "token_type",
        "id_token",
        "not-before-policy",
        "session_state",
        "scope",
    }
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300 and isinstance(body["expires_in"], int)
    assert body["refresh_expires_in"] == 1800
    assert body["not-before-policy"] == 0
    assert set(body["scope"].split()) == {"openid", "email", "profile"}

    header, claims = jwt_parts(body["access_token"])
    assert header["alg"] == "HS256" and header["typ"] == "JWT"
    assert claims["typ"] == "Bearer"
    assert claims["azp"] == PUBLIC
    assert claims["sid"] == body["session_state"]
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 5
    assert claims["iss"] == f"{idp.server.url}/auth/realms/SSO"
    assert claims["preferred_username"] == "trader"
    assert {"jti", "sub", "scope"} <= set(claims)

    _, refresh_claims = jwt_parts(body["refresh_token"])
    assert refresh_claims["typ"] == "Refresh"
    _, id_claims = jwt_parts(body["id_token"])
    assert id_claims["typ"] == "ID" and id_claims["aud"] == PUBLIC

    assert idp.kc.is_access_token_valid(body["access_token"])
    introspected = idp.kc.introspect(body["access_token"])
    assert introspected is not None
    assert (introspected["sub"], introspected["azp"], introspected["sid"]) == (
        claims["sub"],
        PUBLIC,
        body["session_state"],
    )
    # Refresh and ID tokens are not access tokens; tampering breaks the signature.
    assert not idp.kc.is_access_token_valid(body["refresh_token"])
    assert not idp.kc.is_access_token_valid(body["id_token"])
    head, _, sig = body["access_token"].split(".")
    forged = base64.urlsafe_b64encode(
        json.dumps({**claims, "sub": "someone-else"}).encode()
    ).rstrip(b"=")
    assert not idp.kc.is_access_token_valid(f"{head}.{forged.decode()}.{sig}")
    assert not idp.kc.is_access_token_valid("not-a-jwt")


async def test_id_token_only_with_openid_scope(idp: Idp) -> None:
    body = await idp.login(scope="email")
    assert "id_token" not in body
    assert "openid" not in body["scope"].split()


async def test_wrong_user_credentials(idp: Idp) -> None:
    status, body = await idp.post({**LOGIN, "password": "nope"})
    assert_error(status, body, 401, "invalid_grant", "Invalid user credentials")
    status, body = await idp.post({**LOGIN, "username": "ghost"})
    assert_error(status, body, 401, "invalid_grant", "Invalid user credentials")


async def test_bad_client(idp: Idp) -> None:
    desc = "Invalid client or Invalid client credentials"
    status, body = await idp.post({**LOGIN, "client_id": "unknown"})
    assert_error(status, body, 401, "invalid_client", desc)
    # Confidential client: missing or wrong secret, by form and by Basic auth.
    status, body = await idp.post({**LOGIN, "client_id": SECRET_CLIENT})
    assert_error(status, body, 401, "invalid_client", desc)
    status, body = await idp.post({**LOGIN, "client_id": SECRET_CLIENT, "client_secret": "x"})
    assert_error(status, body, 401, "invalid_client", desc)
    form = {k: v for k, v in LOGIN.items() if k != "client_id"}
    status, body = await idp.post(form, basic=(SECRET_CLIENT, "wrong"))
    assert_error(status, body, 401, "invalid_client", desc)
    status, body = await idp.post(form)
    assert_error(status, body, 400, "invalid_client", "Missing client_id parameter")


async def test_confidential_client_by_form_and_basic(idp: Idp) -> None:
    body = await idp.login(client_id=SECRET_CLIENT, client_secret=SECRET)
    assert jwt_parts(body["access_token"])[1]["azp"] == SECRET_CLIENT
    form = {k: v for k, v in LOGIN.items() if k != "client_id"}
    # Basic credentials are accepted form-urlencoded (RFC 6749 2.3.1) and raw.
    for secret in (quote_plus(SECRET), SECRET):
        status, body = await idp.post(form, basic=(SECRET_CLIENT, secret))
        assert status == 200, body
        assert idp.kc.is_access_token_valid(body["access_token"])


async def test_refresh_rotates_tokens_and_keeps_session(idp: Idp) -> None:
    first = await idp.login()
    status, second = await idp.refresh(first["refresh_token"])
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["session_state"] == first["session_state"]
    assert second["scope"] == first["scope"]
    assert idp.kc.is_access_token_valid(first["access_token"])
    assert idp.kc.is_access_token_valid(second["access_token"])
    # "Revoke Refresh Token" is off: the old refresh token stays usable.
    status, third = await idp.refresh(first["refresh_token"])
    assert status == 200, third
    assert idp.kc.stats()["by_grant"] == {"password": 1, "refresh_token": 2}


async def test_refresh_errors(idp: Idp) -> None:
    tokens = await idp.login()
    status, body = await idp.refresh(tokens["refresh_token"], client_id="direct_access")
    assert_error(status, body, 400, "invalid_grant", "Unmatching clients")
    status, body = await idp.refresh("garbage.token.value")
    assert_error(status, body, 400, "invalid_grant", "Invalid refresh token")
    # An access token is not a refresh token.
    status, body = await idp.refresh(tokens["access_token"])
    assert_error(status, body, 400, "invalid_grant", "Invalid refresh token")
    status, body = await idp.post({"grant_type": "refresh_token", "client_id": PUBLIC})
    assert_error(status, body, 400, "invalid_request", "Missing form parameter: refresh_token")


async def test_expired_refresh_token(idp: Idp) -> None:
    idp.kc.refresh_ttl = 0.5
    tokens = await idp.login()
    assert tokens["refresh_expires_in"] == 1  # ceil(0.5)
    await asyncio.sleep(0.6)
    status, body = await idp.refresh(tokens["refresh_token"])
    assert_error(status, body, 400, "invalid_grant", "Token is not active")


async def test_access_token_expiry_has_subsecond_precision(idp: Idp) -> None:
    idp.kc.access_ttl = 0.4
    tokens = await idp.login()
    assert tokens["expires_in"] == 1
    assert idp.kc.is_access_token_valid(tokens["access_token"])
    await asyncio.sleep(0.5)
    assert not idp.kc.is_access_token_valid(tokens["access_token"])
    assert idp.kc.introspect(tokens["access_token"]) is None


async def test_refresh_resets_session_idle(idp: Idp) -> None:
    idp.kc.refresh_ttl = 1.0
    first = await idp.login()
    await asyncio.sleep(0.6)
    status, second = await idp.refresh(first["refresh_token"])
    assert status == 200, second
    await asyncio.sleep(0.6)  # 1.2 s after login, but only 0.6 s after the last refresh
    status, third = await idp.refresh(second["refresh_token"])
    assert status == 200, third
    status, body = await idp.refresh(first["refresh_token"])  # its own expiry has passed
    assert_error(status, body, 400, "invalid_grant", "Token is not active")


async def test_idle_session_ends_access_tokens(idp: Idp) -> None:
    idp.kc.refresh_ttl = 0.3
    tokens = await idp.login()
    await asyncio.sleep(0.4)
    assert not idp.kc.is_access_token_valid(tokens["access_token"])  # session idled out


async def test_session_max_caps_refresh(idp: Idp) -> None:
    idp.kc.session_max = 0.5
    tokens = await idp.login()
    assert tokens["expires_in"] == 1 and tokens["refresh_expires_in"] == 1
    await asyncio.sleep(0.6)
    assert not idp.kc.is_access_token_valid(tokens["access_token"])
    status, body = await idp.refresh(tokens["refresh_token"])
    assert_error(status, body, 400, "invalid_grant", "Token is not active")


async def test_revoked_sessions(idp: Idp) -> None:
    one = await idp.login()
    two = await idp.login(client_id="direct_access")
    assert idp.kc.revoke_sessions() == 2
    for tokens, client in ((one, PUBLIC), (two, "direct_access")):
        assert not idp.kc.is_access_token_valid(tokens["access_token"])
        status, body = await idp.refresh(tokens["refresh_token"], client)
        assert_error(status, body, 400, "invalid_grant", "Session not active")
    # A fresh login works again.
    assert idp.kc.is_access_token_valid((await idp.login())["access_token"])


async def test_refresh_token_reuse_kills_session(idp: Idp) -> None:
    idp.kc.revoke_refresh_token = True
    first = await idp.login()
    status, second = await idp.refresh(first["refresh_token"])
    assert status == 200, second
    status, body = await idp.refresh(first["refresh_token"])
    assert_error(status, body, 400, "invalid_grant", "Maximum allowed refresh token reuse exceeded")
    # Reuse is treated as theft: the whole session, including the new tokens, is gone.
    assert not idp.kc.is_access_token_valid(second["access_token"])
    status, body = await idp.refresh(second["refresh_token"])
    assert_error(status, body, 400, "invalid_grant", "Session not active")


async def test_fail_with_count_then_success(idp: Idp) -> None:
    idp.kc.fail_with(500, count=2)
    for _ in range(2):
        status, body = await idp.post(LOGIN)
        assert status == 500
        assert body["error"] == "server_error"
    status, body = await idp.post(LOGIN)
    assert status == 200, body
    stats = idp.kc.stats()
    assert stats["calls"] == 3
    assert [e["status"] for e in stats["events"]] == [500, 500, 200]


async def test_fail_until_cleared(idp: Idp) -> None:
    idp.kc.fail_with(429)
    for _ in range(3):
        status, body = await idp.post(LOGIN)
        assert (status, body["error"]) == (429, "temporarily_unavailable")
    idp.kc.fail_with(None)
    assert (await idp.post(LOGIN))[0] == 200
    with pytest.raises(ValueError):
        idp.kc.fail_with(200)


async def test_max_concurrent_counts_overlapping_calls(idp: Idp) -> None:
    idp.kc.latency = 0.2
    started = time.monotonic()
    results = await asyncio.gather(*(idp.post(LOGIN) for _ in range(5)))
    elapsed = time.monotonic() - started
    assert [status for status, _ in results] == [200] * 5
    assert elapsed < 0.9  # they really ran side by side (one after another takes 1 s)
    stats = idp.kc.stats()
    assert stats["max_concurrent"] == 5
    assert stats["calls"] == 5 and stats["by_grant"] == {"password": 5}
    events = stats["events"]
    assert all(e["end"] - e["start"] >= 0.2 for e in events)
    assert max(e["start"] for e in events) < min(e["end"] for e in events)  # all overlap

    idp.kc.reset_stats()
    await idp.post(LOGIN)
    assert idp.kc.stats()["max_concurrent"] == 1
    assert idp.kc.stats()["calls"] == 1


async def test_client_credentials(idp: Idp) -> None:
    status, body = await idp.post(
        {"grant_type": "client_credentials"}, basic=(SECRET_CLIENT, SECRET)
    )
    assert status == 200, body
    assert "refresh_token" not in body and "id_token" not in body
    assert body["expires_in"] == 300
    claims = idp.kc.introspect(body["access_token"])
    assert claims is not None and claims["azp"] == SECRET_CLIENT
    assert claims["preferred_username"] == "service-account-svc"

    status, body = await idp.post({"grant_type": "client_credentials", "client_id": PUBLIC})
    assert_error(
        status,
        body,
        400,
        "unauthorized_client",
        "Public client not allowed to retrieve service account",
    )


async def test_grant_type_errors(idp: Idp) -> None:
    status, body = await idp.post({**LOGIN, "grant_type": "authorization_code"})
    assert_error(status, body, 400, "unsupported_grant_type", "Unsupported grant_type")
    status, body = await idp.post({"client_id": PUBLIC})
    assert_error(status, body, 400, "invalid_request", "Missing form parameter: grant_type")
    status, body = await idp.post({"grant_type": "password", "client_id": PUBLIC})
    assert_error(status, body, 400, "invalid_request", "Missing parameter: username")


async def test_unknown_realm(idp: Idp) -> None:
    url = idp.token_url.replace("/realms/SSO/", "/realms/OTHER/")
    async with idp.http.post(url, data=LOGIN) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "Realm does not exist"}


async def test_hang_until_released(idp: Idp) -> None:
    idp.kc.hang(True)
    call = asyncio.create_task(idp.post(LOGIN))
    await asyncio.sleep(0.3)
    assert not call.done()
    assert idp.kc.stats()["in_flight"] == 1
    idp.kc.hang(False)
    status, body = await asyncio.wait_for(call, 2)
    assert status == 200, body
    assert idp.kc.stats()["in_flight"] == 0


async def test_stop_does_not_wait_for_hung_calls(idp: Idp) -> None:
    idp.kc.hang(True)
    call = asyncio.create_task(idp.post(LOGIN))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await idp.server.stop()
    assert time.monotonic() - started < 1.5
    status, body = await asyncio.wait_for(call, 2)
    assert status == 503 and body["error"] == "server_error"

    # Still hanging after a restart on the same port, until released.
    await idp.server.start()
    call = asyncio.create_task(idp.post(LOGIN))
    await asyncio.sleep(0.2)
    assert not call.done()
    idp.kc.hang(False)
    assert (await asyncio.wait_for(call, 2))[0] == 200


async def test_http_controls(idp: Idp) -> None:
    http = idp.http
    async with http.post(idp.control_url("fail"), params={"status": "503", "count": "1"}) as r:
        assert r.status == 200
        assert await r.json() == {"status": 503, "count": 1}
    assert (await idp.post(LOGIN))[0] == 503
    assert (await idp.post(LOGIN))[0] == 200

    async with http.post(idp.control_url("fail"), params={"status": "502"}):
        pass
    assert (await idp.post(LOGIN))[0] == 502
    async with http.post(idp.control_url("fail")) as r:  # no status: clear
        assert await r.json() == {"status": None, "count": None}
    tokens = await idp.login()
    async with http.post(idp.control_url("fail"), params={"status": "abc"}) as r:
        assert r.status == 400

    async with http.get(idp.control_url("stats")) as r:
        stats = await r.json()
    assert stats["calls"] == 4
    assert stats["by_grant"] == {"password": 4}
    assert [e["status"] for e in stats["events"]] == [503, 200, 502, 200]

    async with http.post(idp.control_url("revoke")) as r:
        assert (await r.json())["revoked_sessions"] >= 1
    assert not idp.kc.is_access_token_valid(tokens["access_token"])
    status, body = await idp.refresh(tokens["refresh_token"])
    assert_error(status, body, 400, "invalid_grant", "Session not active")

    async with http.post(idp.control_url("hang"), params={"enabled": "1"}) as r:
        assert await r.json() == {"hang": True}
    call = asyncio.create_task(idp.post(LOGIN))
    await asyncio.sleep(0.2)
    assert not call.done()
    async with http.post(idp.control_url("hang"), params={"enabled": "0"}) as r:
        assert await r.json() == {"hang": False}
    assert (await asyncio.wait_for(call, 2))[0] == 200

    async with http.post(idp.control_url("settings"), json={"access_ttl": 2.5}) as r:
        assert (await r.json())["access_ttl"] == 2.5
    assert idp.kc.access_ttl == 2.5
    assert (await idp.login())["expires_in"] == 3
    async with http.post(idp.control_url("settings"), json={"bogus": 1}) as r:
        assert r.status == 400
    async with http.post(idp.control_url("settings"), json={"latency": "slow"}) as r:
        assert r.status == 400

    async with http.post(idp.control_url("stats/reset")) as r:
        assert (await r.json())["calls"] == 0
    assert idp.kc.stats()["events"] == []
