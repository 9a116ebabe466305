"""IdP faults for the token-endpoint flows (Keycloak password, client credentials, WSO2):
the sidecar stays up, keeps serving a still-valid token, backs off (the IdP's calls are
counted), answers 503 JSON fast when no valid token exists, and recovers by itself."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.config import validate_config
from sidecar.sandbox.servers import SandboxStack, TlsServer
from tests.helpers.sidecars import proxy_url

NTB = "http://api.moex.com/ntb"

# name -> (status, body, extra headers) the faulty IdP answers with
FAULTS: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "500": (500, b'{"error":"server_error"}', {}),
    "non-JSON body": (200, b"<html>maintenance</html>", {}),
    "no access_token": (200, b'{"token_type":"Bearer","expires_in":300}', {}),
    "expires_in zero": (200, b'{"access_token":"tok","expires_in":0}', {}),
    "expires_in negative": (200, b'{"access_token":"tok","expires_in":-5}', {}),
    "429 from the IdP": (429, b'{"error":"slow_down"}', {"Retry-After": "1"}),
    "invalid_grant": (400, b'{"error":"invalid_grant","error_description":"x"}', {}),
    "hanging": (0, b"", {}),
}


class FaultyIdp:
    """Passes token calls to the sandbox Keycloak, or answers with a scripted fault."""

    def __init__(self, real_token_url: str, ssl_context: Any) -> None:
        self.real = real_token_url
        self.ssl = ssl_context
        self.fault: str | None = None
        self.calls = 0
        self.app = web.Application()
        self.app.router.add_post("/token", self.token)
        self.release = asyncio.Event()

    async def token(self, request: web.Request) -> web.Response:
        self.calls += 1
        form = await request.post()
        if self.fault is not None:
            status, body, headers = FAULTS[self.fault]
            if status == 0:
                await self.release.wait()  # hangs until the test ends
                return web.Response(status=503)
            return web.Response(status=status, body=body, headers=headers,
                                content_type="application/json")
        async with aiohttp.ClientSession() as session:
            async with session.post(self.real, data=dict(form), ssl=self.ssl,
                                    headers={"Authorization": request.headers.get(
                                        "Authorization", "")}) as resp:
                return web.Response(status=resp.status, body=await resp.read(),
                                    content_type="application/json")


@pytest.fixture
async def faulty(sandbox: SandboxStack) -> AsyncIterator[tuple[FaultyIdp, str]]:
    idp = FaultyIdp(sandbox.token_url, sandbox.pki.client_ssl_context())
    server = TlsServer(idp.app, sandbox.pki.server_ssl_context(sandbox.pki.issue_server("faulty")))
    await server.start()
    try:
        yield idp, server.url + "/token"
    finally:
        idp.release.set()
        await server.stop()


def _auth(kind: str, token_url: str, sandbox: SandboxStack, base: dict[str, Any]) -> dict[str, Any]:
    # A refused login (the invalid_grant fault) waits refused_backoff (30 s by default)
    # before the next try; 1 s lets the recovery show within the test.
    common = {"token_url": token_url, "backoff_cap": 1, "timeout": 1, "refused_backoff": 1}
    if kind == "client_credentials":
        sandbox.idp.clients["svc"] = "svc-secret"
        return {"type": "client_credentials", "client_id": "svc", "client_secret": "svc-secret",
                **common}
    return {**base, **common}


async def _get(session: aiohttp.ClientSession, proxy: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with session.get(f"{NTB}/x", proxy=proxy) as resp:
        body = await resp.read()
        return resp.status, json.loads(body), time.monotonic() - started


@pytest.mark.parametrize("kind", ["oidc_password", "client_credentials"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_idp_fault(
    sandbox: SandboxStack, faulty: tuple[FaultyIdp, str], sidecar_config: dict[str, Any],
    kind: str, fault: str,
) -> None:
    idp, token_url = faulty
    sandbox.idp.access_ttl = 4
    upstream = sidecar_config["upstreams"]["moex-ntb"]
    upstream["auth"] = _auth(kind, token_url, sandbox, upstream["auth"])
    upstream["timeouts"] = {"token_wait": 2}
    sidecar = Sidecar(validate_config(sidecar_config))
    await sidecar.start()
    try:
        await _exercise(idp, proxy_url(sidecar), fault)
    finally:
        await sidecar.stop(grace=0.5)


async def _exercise(idp: FaultyIdp, proxy: str, fault: str) -> None:
    async with aiohttp.ClientSession() as session:
        assert (await _get(session, proxy))[0] == 200
        idp.fault = fault
        calls_before = idp.calls
        # Still valid for a while: served from the cached token while renewals fail.
        assert (await _get(session, proxy))[0] == 200
        await asyncio.sleep(4.2)  # now it has expired; the IdP is still broken
        status, body, took = await _get(session, proxy)
        assert status == 503 and body["error"] == "no_token" and body["upstream"] == "moex-ntb"
        assert took < 2.5  # bounded by token_wait, never a hang
        # Backoff: no tight loop (renewal from 2 s left, attempts at least 0.5 s apart).
        assert idp.calls - calls_before <= 12, idp.calls - calls_before
        idp.fault = None
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            if (await _get(session, proxy))[0] == 200:
                break
            await asyncio.sleep(0.3)
        else:
            raise AssertionError("no recovery")
