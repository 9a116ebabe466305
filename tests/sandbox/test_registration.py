"""The MOEX client registration API over real TLS, with a token from the Passport login."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from sidecar.sandbox.keycloak import KeycloakEmulator
from sidecar.sandbox.moex import MoexStack, start_moex_registration
from sidecar.sandbox.passport import COOKIE_NAME
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.registration import DEFAULT_HOURS, MAX_BODY, MSK
from sidecar.sandbox.servers import TlsServer

NOON = datetime(2026, 11, 20, 12, 0, tzinfo=MSK)
XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<REGISTRATION xmlns="urn:example:registration" DOC_DATE="2026-11-19">'
    "<doc_num>A-17</doc_num><CLIENT NAME='Иванов И.И.' INN='7700000000'/>"
    "</REGISTRATION>"
).encode()
XML_HEADERS = {"Content-Type": "application/xml; charset=utf-8"}


def sign_detached(data: bytes, signer: IssuedCert) -> str:
    key = serialization.load_pem_private_key(signer.key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(signer.cert, key, hashes.SHA256())
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.DetachedSignature],
        )
    )
    return base64.b64encode(der).decode("ascii")


@dataclass
class Env:
    kc: KeycloakEmulator
    stack: MoexStack
    http: aiohttp.ClientSession
    token_url: str
    access_token: str

    @property
    def applications(self) -> str:
        return self.stack.api_url + "/client/v1/applications/"

    async def post(
        self, body: bytes = XML, *, token: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[aiohttp.ClientResponse, dict[str, Any] | None]:
        all_headers = {**XML_HEADERS, **(headers or {})}
        bearer = self.access_token if token is None else token
        if bearer:
            all_headers["Authorization"] = f"Bearer {bearer}"
        async with self.http.post(self.applications, data=body, headers=all_headers) as resp:
            raw = await resp.read()
            payload = await resp.json() if resp.content_type == "application/json" else None
            assert raw or resp.status == 202
            return resp, payload

    async def get(self, location: str) -> tuple[int, ET.Element | dict[str, Any]]:
        """The status answer: XML (the registration file format) or a JSON error."""
        headers = {"Authorization": f"Bearer {self.access_token}"}
        async with self.http.get(self.stack.api_url + location, headers=headers) as resp:
            if resp.content_type == "application/xml":
                return resp.status, ET.fromstring(await resp.read())
            return resp.status, await resp.json()


async def passport_login(
    http: aiohttp.ClientSession, stack: MoexStack, token_url: str
) -> dict[str, Any]:
    """The full two-factor flow: Passport cookie, detached signature, token request."""
    basic = base64.b64encode(b"trader@example.com:passport-password").decode()
    async with http.get(
        stack.passport_url, headers={"Authorization": f"Basic {basic}"}, allow_redirects=False
    ) as resp:
        assert resp.status == 200
        passport_token = resp.cookies[COOKIE_NAME].value
    form = {
        "grant_type": "password",
        "grant_type_moex": "passport",
        "scope": "client_registration",
        "client_id": stack.client_id,
        "client_secret": stack.client_secret,
        "certificate": passport_token,
        "algorithm": "RSA",
        "signature": sign_detached(passport_token.encode(), stack.signer),
    }
    async with http.post(token_url, data=form) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    pki = Pki(tmp_path)
    kc = KeycloakEmulator()
    # A fixed clock inside business hours, so the tests pass whatever the real time is.
    stack = await start_moex_registration(pki, kc, clock=lambda: NOON)
    idp_server = TlsServer(kc.app, pki.server_ssl_context(pki.issue_server("idp")))
    await idp_server.start()
    connector = aiohttp.TCPConnector(ssl=pki.client_ssl_context())
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        token_url = idp_server.url + kc.token_path
        tokens = await passport_login(http, stack, token_url)
        yield Env(kc, stack, http, token_url, tokens["access_token"])
    await idp_server.stop()
    await stack.stop()


async def test_post_accepted_then_status(env: Env) -> None:
    api = env.stack.registration
    api.min_interval = 0
    api.processing_delay = 0.3
    resp, payload = await env.post()
    assert resp.status == 202 and payload is None
    location = resp.headers["Location"]
    assert location == "/client/v1/applications/2026-11-19/A-17"
    assert api.document("2026-11-19", "A-17") == XML

    # The status comes in the registration file format (XML, like the document sent),
    # not JSON: the document itself, its status on the root element.
    status, body = await env.get(location)
    assert status == 200 and isinstance(body, ET.Element)
    assert body.tag == "{urn:example:registration}REGISTRATION"
    assert (body.get("DOC_DATE"), body.get("DOC_NUM"), body.get("STATUS")) == (
        "2026-11-19",
        "A-17",
        "accepted",
    )
    client = body.find("{urn:example:registration}CLIENT")
    assert client is not None and client.get("NAME") == "Иванов И.И."
    await asyncio.sleep(0.35)
    processed = (await env.get(location))[1]
    assert isinstance(processed, ET.Element) and processed.get("STATUS") == "processed"
    assert (await env.get("/client/v1/applications/2026-11-19/nope"))[0] == 404

    # No DOC_DATE / DOC_NUM: today's date by the API's (Moscow) clock and a number.
    resp, _ = await env.post(b"<REGISTRATION><CLIENT/></REGISTRATION>")
    assert resp.status == 202
    assert resp.headers["Location"] == "/client/v1/applications/2026-11-20/1"
    # The same document number again is refused.
    resp, payload = await env.post()
    assert resp.status == 400 and payload is not None
    assert "already registered" in payload["detail"]

    stats = api.stats()
    assert (stats["accepted"], stats["duplicates"], stats["status_requests"]) == (2, 1, 3)
    last = stats["last_request"]
    assert last["method"] == "POST" and last["token_azp"] == "moex_registration"
    assert last["body_sha256"] == hashlib.sha256(XML).hexdigest()
    assert last["body_length"] == len(XML)


async def test_malformed_xml_and_wrong_content_type(env: Env) -> None:
    env.stack.registration.min_interval = 0
    resp, payload = await env.post(b"<REGISTRATION><CLIENT></REGISTRATION>")
    assert resp.status == 400 and payload is not None
    assert "not well-formed" in payload["detail"] and "line 1" in payload["detail"]
    resp, payload = await env.post(XML, headers={"Content-Type": "text/plain"})
    assert resp.status == 400 and payload is not None
    assert "application/xml" in payload["detail"]
    stats = env.stack.registration.stats()
    assert (stats["bad_xml"], stats["bad_content_type"], stats["accepted"]) == (1, 1, 0)


async def test_body_over_one_megabyte(env: Env) -> None:
    env.stack.registration.min_interval = 0
    prefix = b"<REGISTRATION>"
    suffix = b"</REGISTRATION>"
    exactly = prefix + b" " * (MAX_BODY - len(prefix) - len(suffix)) + suffix
    assert (await env.post(exactly))[0].status == 202
    for size in (MAX_BODY + 1, 4 * MAX_BODY):
        resp, payload = await env.post(exactly[:-1] + b" " * (size - MAX_BODY) + b">")
        assert resp.status == 413 and payload is not None
        assert payload["error"] == "payload_too_large"
    last = env.stack.registration.stats()["last_request"]
    # Reading stopped soon after the limit instead of taking in all 4 MB.
    assert MAX_BODY < last["body_length"] < 2 * MAX_BODY and not last["body_complete"]
    assert env.stack.registration.stats()["too_large"] == 2
    assert (await env.post(b"<R DOC_NUM='after'/>"))[0].status == 202


async def test_rate_limit_one_request_per_second(env: Env) -> None:
    api = env.stack.registration
    assert api.min_interval == 1.0  # the default
    first, _ = await env.post()
    await asyncio.sleep(0.5)
    second, payload = await env.post(b"<R DOC_NUM='2'/>")
    assert first.status == 202
    assert second.status == 429 and second.headers["Retry-After"] == "30"
    assert payload is not None and payload["error"] == "too_many_requests"
    # Another client has its own budget.
    async with env.http.post(
        env.token_url,
        data={
            "grant_type": "password",
            "username": "trader",
            "password": "trader-password",
            "client_id": "LK_NTB_PUBLIC",
            "scope": "client_registration",
        },
    ) as resp:
        other = (await resp.json())["access_token"]
    assert (await env.post(b"<R DOC_NUM='3'/>", token=other))[0].status == 202
    # The refused request did not move the window: 1 s after the first one, it is open.
    await asyncio.sleep(max(0.0, api.arrivals[0] + 1.05 - time.monotonic()))
    assert (await env.post(b"<R DOC_NUM='4'/>"))[0].status == 202
    stats = api.stats()
    assert (stats["accepted"], stats["rate_limited"]) == (3, 1)
    assert len(stats["arrivals"]) == 4


async def test_business_hours_in_moscow_time(env: Env) -> None:
    api = env.stack.registration
    api.min_interval = 0
    assert api.hours == DEFAULT_HOURS
    cases = [
        ("2026-11-20T10:59:59+03:00", 503),
        ("2026-11-20T11:00:00+03:00", 202),
        ("2026-11-20T12:59:59Z", 202),  # 15:59:59 MSK
        ("2026-11-20T16:00:00+03:00", 503),
    ]
    clock_url = env.stack.api_url + "/_sandbox/clock"
    for number, (now, want) in enumerate(cases):
        async with env.http.post(clock_url, json={"now": now}) as r:
            assert r.status == 200
            assert (await r.json())["open"] is (want == 202)
        resp, payload = await env.post(f"<R DOC_NUM='{number}'/>".encode())
        assert resp.status == want, now
        if want == 503:
            assert payload is not None and "11:00-16:00 MSK" in payload["detail"]
            assert "Retry-After" not in resp.headers
    assert api.document("2026-11-20", "0") is None  # refused outside hours: not stored

    api.set_clock(datetime(2026, 11, 20, 3, 0, tzinfo=MSK))
    api.hours = None
    assert (await env.post(b"<R DOC_NUM='night'/>"))[0].status == 202
    api.hours = (dtime(2, 0), dtime(4, 0))
    assert (await env.post(b"<R DOC_NUM='night2'/>"))[0].status == 202
    async with env.http.post(clock_url, json={"now": "2026-11-20T12:00:00"}) as r:
        assert r.status == 400  # no UTC offset
    async with env.http.post(clock_url, json={"now": None}) as r:
        assert (await r.json())["fixed"] is False
    assert api.stats()["outside_hours"] == 2


async def test_token_and_scope_required(env: Env) -> None:
    env.stack.registration.min_interval = 0
    resp, payload = await env.post(token="")
    assert resp.status == 401 and payload is not None and payload["error"] == "invalid_token"
    resp, _ = await env.post(token="not-a-token")
    assert resp.status == 401
    async with env.http.post(
        env.token_url,
        data={
            "grant_type": "password",
            "username": "trader",
            "password": "trader-password",
            "client_id": "LK_NTB_PUBLIC",
            "scope": "openid",
        },
    ) as r:
        no_scope = (await r.json())["access_token"]
    resp, payload = await env.post(token=no_scope)
    assert resp.status == 403 and payload is not None
    assert payload["error"] == "insufficient_scope"
    stats = env.stack.registration.stats()
    assert (stats["unauthorized"], stats["forbidden"], stats["accepted"]) == (2, 1, 0)
    assert len(stats["arrivals"]) == 3


async def test_injected_failure(env: Env) -> None:
    api = env.stack.registration
    api.min_interval = 0
    async with env.http.post(
        env.stack.api_url + "/_sandbox/fail", params={"status": "500", "count": "1"}
    ) as r:
        assert await r.json() == {"status": 500, "count": 1}
    resp, payload = await env.post()
    assert resp.status == 500 and payload is not None and payload["error"] == "server_error"
    assert (await env.post())[0].status == 202
    async with env.http.get(env.stack.api_url + "/_sandbox/stats") as r:
        stats = await r.json()
    assert (stats["injected"], stats["accepted"]) == (1, 1)
