"""A token from an IdP or a file goes into the upstream's ``Authorization`` header: anything
but RFC 6750 ``b64token`` characters (CR/LF, non-latin-1, spaces) fails the login instead."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.auth import static
from sidecar.auth.base import MAX_TOKEN_LENGTH, AuthError, Grant, NoToken
from sidecar.auth.oauth import parse_token_response
from sidecar.auth.static import StaticToken
from sidecar.config.auth import StaticAuth
from sidecar.config.errors import SetupError
from sidecar.sandbox.servers import SandboxStack, TlsServer
from tests.helpers.sidecars import SidecarFactory, proxy_url

NTB = "http://api.moex.com/ntb"
INJECTED = "abc\r\nX-Injected: 1"
NON_LATIN1 = "токен-abc"

BAD_TOKENS = {
    "crlf": INJECTED,
    "non_latin1": NON_LATIN1,
    "space": "abc def",
    "comma": "abc,def",
    "padding_inside": "ab=c",
    "only_padding": "==",
    "too_long": "a" * (MAX_TOKEN_LENGTH + 1),
}


@pytest.mark.parametrize(
    "token",
    ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_", "a+b/c==", "A-._~+/9", "x" * MAX_TOKEN_LENGTH],
)
def test_b64token_and_jwt_are_accepted(token: str) -> None:
    assert Grant(access_token=token, expires_in=60).access_token == token


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_unsafe_token_fails_the_login_without_echoing_it(token: str) -> None:
    body = json.dumps({"access_token": token, "expires_in": 60, "refresh_token": "r1"}).encode()
    with pytest.raises(AuthError) as caught:
        parse_token_response(200, body)
    reason = caught.value.reason
    assert "access token" in reason
    assert token not in reason and "X-Injected" not in reason and "токен" not in reason
    assert caught.value.refresh_token == "r1"  # a rotated refresh token is still kept


# -- end to end: a scripted token endpoint, a recording upstream ------------------------------


class Recorder:
    """An mTLS upstream that records the headers of every request it receives."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        return web.json_response({"ok": True})


@dataclass
class Scripted:
    idp: TlsServer  # POST /token answers ``answer`` as JSON
    upstream: TlsServer
    recorder: Recorder
    answer: dict[str, Any]


@pytest.fixture
async def scripted(sandbox: SandboxStack) -> AsyncIterator[Scripted]:
    answer: dict[str, Any] = {}

    async def token(request: web.Request) -> web.Response:
        return web.json_response(answer)

    idp_app = web.Application()
    idp_app.router.add_post("/token", token)
    cert = sandbox.pki.issue_server("scripted")
    recorder = Recorder()
    state = Scripted(
        TlsServer(idp_app, sandbox.pki.server_ssl_context(cert)),
        TlsServer(recorder.app, sandbox.pki.server_ssl_context(cert)),
        recorder,
        answer,
    )
    await state.idp.start()
    await state.upstream.start()
    try:
        yield state
    finally:
        await state.upstream.stop()
        await state.idp.stop()


@pytest.mark.parametrize("token", [INJECTED, NON_LATIN1], ids=["crlf", "non_latin1"])
async def test_idp_token_with_unsafe_characters_never_reaches_the_upstream(
    scripted: Scripted, make_sidecar: SidecarFactory, token: str
) -> None:
    scripted.answer.update(access_token=token, expires_in=300, token_type="Bearer")
    sidecar = await make_sidecar(
        {
            "target": scripted.upstream.url,
            "auth": {"token_url": scripted.idp.url + "/token"},
            "timeouts": {"token_wait": 2},
        }
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # twice: one bad answer must not break the request path for good
            async with session.get(f"{NTB}/x", proxy=proxy_url(sidecar)) as resp:
                body = await resp.json()
                assert resp.status == 503, body
                assert body["error"] == "no_token"
                assert "access token" in body["message"]
                assert "X-Injected" not in body["message"] and "токен" not in body["message"]
        assert scripted.recorder.seen == []  # nothing was sent, let alone an injected header

        # Once the IdP answers a proper token, requests go through with it.
        scripted.answer["access_token"] = "good-token"
        for _ in range(50):
            async with session.get(f"{NTB}/x", proxy=proxy_url(sidecar)) as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.2)
    assert resp.status == 200
    assert all("X-Injected" not in seen for seen in scripted.recorder.seen)
    assert scripted.recorder.seen[-1]["Authorization"] == "Bearer good-token"


# -- static tokens ----------------------------------------------------------------------------


def test_inline_static_token_with_unsafe_characters_is_a_setup_error() -> None:
    with pytest.raises(SetupError) as caught:
        StaticToken("u", StaticAuth(type="static", token=INJECTED))
    assert "X-Injected" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfetoken\n", "not UTF-8"),
        (b"abc\r\nX-Injected: 1\n", "access token"),
        (NON_LATIN1.encode(), "access token"),
    ],
    ids=["not_utf8", "crlf", "non_latin1"],
)
async def test_token_file_that_cannot_be_sent_is_a_clear_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, reason: str
) -> None:
    monkeypatch.setattr(static, "RECHECK_INTERVAL", 0.0)
    path = tmp_path / "token"
    path.write_bytes(content)
    source = StaticToken("u", StaticAuth(type="static", token_file=path))
    await source.start()  # no crash at start-up: the source is simply not ready
    assert not source.ready
    with pytest.raises(NoToken) as caught:
        await source.get()
    assert reason in caught.value.reason and str(path) in caught.value.reason
    assert "X-Injected" not in caught.value.reason

    path.write_text("good-token\n")  # fixed in place: picked up on the next look
    assert (await source.get()).value == "good-token"
    path.write_bytes(content)  # broken again: no longer sent
    with pytest.raises(NoToken):
        await source.get()
