"""The ``json_login`` flow against a real TLS login endpoint whose answer each test chooses:
where the parts are read from, the lifetime's sources in order, failures by kind, and a
header-token API (Keystone style: token in a response header, sent as ``X-Auth-Token``)
behind a real sidecar."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from sidecar.auth.base import AuthError, Failure, InvalidGrant
from sidecar.auth.json_login import JsonLoginFlow, resolve_pointer
from sidecar.config.auth import JsonLoginAuth
from sidecar.sandbox.emulator import LOOPBACK_HOSTS
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import SandboxStack, TlsServer
from tests.helpers.sidecars import SidecarFactory, proxy_url

Answer = Callable[[web.Request], web.Response]


class Endpoint:
    """A login endpoint answering what ``answer`` says; it records what it received."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.answer: Answer = lambda request: web.json_response({})
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TlsServer(
            app, pki.server_ssl_context(pki.issue_server("login", LOOPBACK_HOSTS))
        )

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append((request.path, dict(request.headers), await request.read()))
        return self.answer(request)

    def flow(self, **auth: Any) -> JsonLoginFlow:
        block = {
            "type": "json_login",
            "username": "u1",
            "password": "pw-1",
            "login": {"url": self.server.url + "/login",
                      "json": {"user": {"name": "{username}", "password": "{password}"}}},
            **auth,
        }
        return JsonLoginFlow(JsonLoginAuth.model_validate(block),
                             self.pki.client_ssl_context())


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[Endpoint]:
    ep = Endpoint(Pki(tmp_path / "pki"))
    await ep.server.start()
    try:
        yield ep
    finally:
        await ep.server.stop()


def jwt_with_exp(exp: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(exp)})}.sig"


def test_json_pointer_follows_rfc_6901() -> None:
    doc = {"a/b": {"m~n": [10, {"t": "x"}]}, "": 1}
    assert resolve_pointer(doc, "/a~1b/m~0n/1/t") == "x"
    assert resolve_pointer(doc, "/") == 1
    assert resolve_pointer(doc, "") is doc
    assert resolve_pointer(doc, "/a~1b/m~0n/2") is not doc  # out of range: missing


async def test_login_renders_the_body_and_reads_parts_by_pointer(endpoint: Endpoint) -> None:
    endpoint.answer = lambda r: web.json_response(
        {"data": {"tok": "t-1", "rt": "r-1", "life": 90}})
    flow = endpoint.flow(answer={"token": "/data/tok", "refresh_token": "/data/rt",
                                 "expires_in": "/data/life"})
    grant = await flow.login()
    await flow.close()
    assert (grant.access_token, grant.refresh_token, grant.expires_in) == ("t-1", "r-1", 90)
    _, headers, body = endpoint.received[0]
    assert json.loads(body) == {"user": {"name": "u1", "password": "pw-1"}}
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("answer", "parts", "lifetime"),
    [
        ({"t": "a", "ms": "1800000"}, {"expires_in": "/ms", "expires_in_unit": "ms",
                                       "expires_in_string": True}, 1800),
        ({"t": "a", "at": "2099-01-01T00:00:00Z"}, {"expires_at": "/at"}, None),
        ({"t": "a", "at": "NOW+600ms"}, {"expires_at": "/at", "expires_at_unit": "ms"}, 600),
        ({"t": "JWT+300"}, {}, 300),
        ({"t": "a"}, {}, 42),  # token_ttl, the last resort
    ],
)
async def test_the_lifetime_comes_from_each_source_in_turn(
    endpoint: Endpoint, answer: dict[str, Any], parts: dict[str, Any], lifetime: float | None
) -> None:
    # Times are made now, not at collection: a long run would have aged them.
    if answer.get("at") == "NOW+600ms":
        answer = {**answer, "at": (time.time() + 600) * 1000}
    if answer["t"] == "JWT+300":
        answer = {"t": jwt_with_exp(time.time() + 300)}
    endpoint.answer = lambda r: web.json_response(answer)
    flow = endpoint.flow(answer={"token": "/t", **parts}, token_ttl=42)
    grant = await flow.login()
    await flow.close()
    assert grant.expires_in is not None
    if lifetime is None:
        assert grant.expires_in == 24 * 3600  # far off: capped at a day
    else:
        assert abs(grant.expires_in - lifetime) < 5


async def test_a_lifetime_string_is_refused_unless_allowed(endpoint: Endpoint) -> None:
    endpoint.answer = lambda r: web.json_response({"t": "a", "e": "1800000"})
    flow = endpoint.flow(answer={"token": "/t", "expires_in": "/e"})
    with pytest.raises(AuthError) as caught:
        await flow.login()
    await flow.close()
    assert "set auth.answer.expires_in_string: true" in caught.value.reason


async def test_a_pointer_that_misses_names_the_top_level_keys_never_values(
    endpoint: Endpoint,
) -> None:
    endpoint.answer = lambda r: web.json_response(
        {"access_token": "secret-tok-77", "expires": 60})
    flow = endpoint.flow(answer={"token": "/accessToken", "expires_in": "/expires"})
    with pytest.raises(AuthError) as caught:
        await flow.login()
    reason = caught.value.reason
    assert "no token at /accessToken (auth.answer.token)" in reason
    assert "top-level keys: access_token, expires" in reason
    assert "secret-tok-77" not in reason and caught.value.kind is Failure.BAD_ANSWER
    # An optional part that misses is a warning, once, with the keys too.
    endpoint.answer = lambda r: web.json_response({"t": "ok-tok"})
    flow2 = endpoint.flow(answer={"token": "/t", "expires_in": "/expiresIn"}, token_ttl=30)
    with structlog.testing.capture_logs() as events:
        assert (await flow2.login()).expires_in == 30
        await flow2.login()
    missing = [e for e in events if e["event"] == "json_login_part_missing"]
    assert len(missing) == 1 and missing[0]["field"] == "auth.answer.expires_in"
    assert "ok-tok" not in str(events)
    await flow.close()
    await flow2.close()


async def test_failures_are_sorted_by_the_configured_rules(endpoint: Endpoint) -> None:
    rules = {"refused": {"statuses": [503], "body_contains": ['"success": false']},
             "retry": {"statuses": [400], "body_contains": ["try later"]}}
    flow = endpoint.flow(answer={"token": "/t"}, token_ttl=60, failure=rules)
    cases = [
        (web.json_response({"success": False}), Failure.REFUSED),  # a 200 that says no
        (web.Response(status=503, text="maintenance"), Failure.REFUSED),
        (web.Response(status=400, text="bad"), Failure.UNAVAILABLE),
        (web.Response(status=401, text="try later"), Failure.UNAVAILABLE),
        (web.Response(status=403, text="no"), Failure.REFUSED),  # the default: a 4xx
        (web.Response(status=502, text="gw"), Failure.UNAVAILABLE),
    ]
    for response, kind in cases:
        endpoint.answer = lambda r, resp=response: resp
        with pytest.raises(AuthError) as caught:
            await flow.login()
        assert caught.value.kind is kind, (response.status, caught.value.reason)
    await flow.close()


async def test_a_refused_refresh_means_log_in_again(endpoint: Endpoint) -> None:
    endpoint.answer = lambda r: web.json_response({"message": "expired"}, status=401)
    flow = endpoint.flow(
        answer={"token": "/t", "refresh_token": "/r"}, token_ttl=60,
        refresh={"url": endpoint.server.url + "/refresh", "form": {"rt": "{refresh_token}"}})
    with pytest.raises(InvalidGrant):
        await flow.refresh("r-old")
    await flow.close()
    assert endpoint.received[0][0] == "/refresh" and endpoint.received[0][2] == b"rt=r-old"


async def test_header_token_api_behind_the_sidecar(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    """Keystone style: the token comes in the X-Subject-Token header of the login's answer,
    its expiry as an ISO 8601 date in the body, and the API wants it as X-Auth-Token."""
    pki = sandbox.pki
    seen: list[dict[str, str]] = []
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))

    async def login(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"token": {"expires_at": expires}}, status=201,
                                 headers={"X-Subject-Token": "gAAAAA-keystone-1"})

    async def api(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        ok = request.headers.get("X-Auth-Token") == "gAAAAA-keystone-1"
        return web.json_response({}, status=200 if ok else 401)

    app = web.Application()
    app.router.add_post("/v3/auth/tokens", login)
    app.router.add_route("*", "/v2/{tail:.*}", api)
    server = TlsServer(app, pki.server_ssl_context(pki.issue_server("cloud", LOOPBACK_HOSTS)))
    await server.start()
    try:
        sidecar = await make_sidecar(upstreams={"cloud": {
            "match": ["cloud.example"],
            "target": server.url,
            "tls": {"ca_file": str(pki.ca_file)},
            "auth": {
                "type": "json_login", "username": "admin", "password": "pw",
                "login": {"url": server.url + "/v3/auth/tokens", "json": {"auth": {
                    "identity": {"methods": ["password"], "password": {"user": {
                        "name": "{username}", "password": "{password}"}}}}}},
                "answer": {"token": "header:X-Subject-Token",
                           "expires_at": "/token/expires_at"},
                "token_header": "X-Auth-Token", "token_prefix": "",
            },
        }})
        async with aiohttp.ClientSession() as session:
            async with session.get("http://cloud.example/v2/servers", proxy=proxy_url(sidecar),
                                   headers={"Authorization": "Bearer app-own"}) as resp:
                assert resp.status == 200
    finally:
        await server.stop()
    assert seen[0]["X-Auth-Token"] == "gAAAAA-keystone-1"
    assert "Authorization" not in seen[0]  # the app's own is not forwarded
