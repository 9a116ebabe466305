"""A 429 or 503 from the Passport or MPT auth endpoints carries its Retry-After to the token
manager, as the OAuth token endpoint's does, so the next attempt waits at least that long."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.auth.base import AuthError
from sidecar.auth.moex_passport import PassportClient
from sidecar.auth.mpt import MptSigninFlow
from sidecar.config.auth import MptSigninAuth
from sidecar.http1.retry_after import MAX_RETRY_AFTER, parse_retry_after


async def _busy(request: web.Request) -> web.Response:
    return web.json_response({"error_message": "busy"}, status=429, headers={"Retry-After": "7"})


@pytest.fixture
async def busy_idp() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _busy)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url(""))
    finally:
        await server.close()


class NoSigner:
    async def sign(self, data: bytes) -> bytes:
        raise AssertionError("nothing is signed when the challenge never came")

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7.0), (" 12 ", 12.0), ("0", 0.0), (None, None), ("", None), ("soon", None),
     ("-1", None), ("1.5", None), ("²", None), ("9" * 400, MAX_RETRY_AFTER),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],  # the proxy's parser: a past date is no wait
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


async def test_passport_429_carries_retry_after(busy_idp: str) -> None:
    client = PassportClient(busy_idp + "/authenticate", "u", "p", ssl.create_default_context(), 2)
    try:
        with pytest.raises(AuthError) as caught:
            await client.fetch()
    finally:
        await client.close()
    assert caught.value.reason == "MOEX Passport answered 429"
    assert caught.value.retry_after == 7


async def test_mpt_429_carries_retry_after(busy_idp: str) -> None:
    cfg = MptSigninAuth.model_construct(
        type="mpt_signin", base_url=busy_idp + "/api", token_field="token", token_ttl=3600.0,
        extra_fields={}, timeout=2.0, backoff_cap=5.0, tls=None,
    )
    flow = MptSigninFlow(cfg, ssl.create_default_context(), NoSigner())  # type: ignore[arg-type]
    try:
        with pytest.raises(AuthError) as caught:
            await flow.login()
    finally:
        await flow.close()
    assert caught.value.reason.startswith("MPT /auth/key answered 429")
    assert caught.value.retry_after == 7
