"""The KISC-like WSO2 gateway over real mutual TLS: tokens, the messages API and controls."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.x509.oid import NameOID
from multidict import CIMultiDictProxy

from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.servers import TlsServer
from sidecar.sandbox.wso2 import (
    FAULTS,
    SANDBOX_SYSTEM_PREFIX,
    Wso2Gateway,
    issue_kisc_client,
    start_wso2,
)

KEY = "kisc-consumer-key"
SECRET = "kisc-consumer-secret"
USER = "bank-user"
PASSWORD = "bank-password"
LOGIN = {"grant_type": "password", "username": USER, "password": PASSWORD, "scope": "default"}
MESSAGES = "/etsfo/1.0.0/messages/"
INVALID_DESCRIPTION = (
    "Access failure for API: /etsfo/1.0.0, version: 1.0.0 status: (900901) - Invalid "
    "Credentials. Make sure you have given the correct access token"
)
CHALLENGE = (
    'OAuth2 realm="WSO2 API Manager", error="invalid_token", '
    'error_description="The access token expired"'
)
AMS = "{http://wso2.org/apimanager/security}"
DS = "{http://ws.wso2.org/dataservice}"
SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"


def basic(key: str = KEY, secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Kisc:
    pki: Pki
    gw: Wso2Gateway
    server: TlsServer
    client_cert: IssuedCert
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return self.server.url + path

    async def token(
        self,
        form: dict[str, str],
        headers: dict[str, str] | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> tuple[int, dict[str, Any]]:
        session = http or self.http
        hdrs = basic() if headers is None else headers
        async with session.post(self.url("/token"), data=form, headers=hdrs) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()

    async def login(self, **overrides: str) -> dict[str, Any]:
        status, body = await self.token({**LOGIN, **overrides})
        assert status == 200, body
        return body

    async def refresh(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        return await self.token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def call(
        self, method: str, path: str = MESSAGES, **kwargs: Any
    ) -> tuple[int, CIMultiDictProxy[str], bytes, str]:
        async with self.http.request(method, self.url(path), **kwargs) as resp:
            return resp.status, resp.headers, await resp.read(), resp.content_type


KiscFactory = Callable[..., Awaitable[Kisc]]


@pytest.fixture
async def make_kisc(tmp_path: Path) -> AsyncIterator[KiscFactory]:
    pki = Pki(tmp_path / "pki")
    client_cert = issue_kisc_client(pki)
    started: list[tuple[TlsServer, aiohttp.ClientSession]] = []

    async def make(**settings: Any) -> Kisc:
        gw, server = await start_wso2(pki, **settings)
        connector = aiohttp.TCPConnector(ssl=pki.client_ssl_context(client_cert))
        http = aiohttp.ClientSession(connector=connector)
        started.append((server, http))
        return Kisc(pki, gw, server, client_cert, http)

    yield make
    for server, http in started:
        await http.close()
        await server.stop()


@pytest.fixture
async def kisc(make_kisc: KiscFactory) -> Kisc:
    return await make_kisc()


def assert_oauth_error(
    result: tuple[int, dict[str, Any]], status: int, error: str, description: str
) -> None:
    assert result == (status, {"error": error, "error_description": description})


def fault_json(body: bytes) -> dict[str, Any]:
    return json.loads(body)["fault"]


# -- /token --------------------------------------------------------------------------------


async def test_password_grant_fields(kisc: Kisc) -> None:
    async with kisc.http.post(kisc.url("/token"), data=LOGIN, headers=basic()) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    assert set(body) == {"access_token", "refresh_token", "scope", "token_type", "expires_in"}
    assert uuid.UUID(body["access_token"]).version == 4
    assert uuid.UUID(body["refresh_token"]).version == 4
    assert body["access_token"] != body["refresh_token"]
    assert body["scope"] == "default" and body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert kisc.gw.is_access_token_valid(body["access_token"])
    assert not kisc.gw.is_access_token_valid(body["refresh_token"])
    # scope defaults to "default" when not sent
    form = {k: v for k, v in LOGIN.items() if k != "scope"}
    assert (await kisc.token(form))[1]["scope"] == "default"
    stats = kisc.gw.stats()
    assert stats["calls"] == 2 and stats["by_grant"] == {"password": 2}


async def test_relogin_returns_same_token_with_less_time(make_kisc: KiscFactory) -> None:
    kisc = await make_kisc(access_ttl=5)
    first = await kisc.login()
    assert first["expires_in"] == 5
    await asyncio.sleep(1.2)
    second = await kisc.login()
    assert second["access_token"] == first["access_token"]
    assert second["refresh_token"] == first["refresh_token"]
    assert second["expires_in"] == 3  # floor(5 - 1.2)
    # Another scope is another token row.
    other = await kisc.login(scope="default openid")
    assert other["access_token"] != first["access_token"]
    assert other["scope"] == "default openid"
    assert kisc.gw.is_access_token_valid(first["access_token"])


async def test_refresh_rotates_and_old_tokens_die(kisc: Kisc) -> None:
    first = await kisc.login()
    status, second = await kisc.refresh(first["refresh_token"])
    assert status == 200, second
    assert second["access_token"] not in (first["access_token"], first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert second["expires_in"] == 3600 and second["scope"] == "default"

    status, _, body, _ = await kisc.call("GET", headers=bearer(first["access_token"]))
    assert status == 401 and fault_json(body)["code"] == 900901
    status, _, _, _ = await kisc.call("GET", headers=bearer(second["access_token"]))
    assert status == 200

    not_found = "Persisted access token data not found"
    assert_oauth_error(await kisc.refresh(first["refresh_token"]), 400, "invalid_grant", not_found)
    assert_oauth_error(await kisc.refresh(str(uuid.uuid4())), 400, "invalid_grant", not_found)
    stats = kisc.gw.stats()
    assert stats["refresh_reuse"] == 1
    assert stats["by_grant"] == {"password": 1, "refresh_token": 3}
    # A password grant now hands back the refreshed, still-valid pair.
    again = await kisc.login()
    assert again["access_token"] == second["access_token"]
    assert again["refresh_token"] == second["refresh_token"]


async def test_expired_refresh_token(make_kisc: KiscFactory) -> None:
    kisc = await make_kisc(access_ttl=0.2, refresh_ttl=0.4)
    tokens = await kisc.login()
    await asyncio.sleep(0.5)
    assert_oauth_error(
        await kisc.refresh(tokens["refresh_token"]),
        400,
        "invalid_grant",
        "Persisted access token data not found",
    )
    assert kisc.gw.stats()["refresh_reuse"] == 0
    # An expired pair is never handed back: a login issues a fresh one.
    fresh = await kisc.login()
    assert fresh["access_token"] != tokens["access_token"]


async def test_bad_client_credentials(kisc: Kisc) -> None:
    failed = (401, "invalid_client", "Client Authentication failed.")
    for headers in (
        basic(secret="wrong"),
        basic(key="other-key"),
        {},
        {"Authorization": "Basic !!not-base64!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Bearer something"},
    ):
        assert_oauth_error(await kisc.token(LOGIN, headers), *failed)
    # WSO2 also takes the consumer credentials as form fields.
    status, body = await kisc.token({**LOGIN, "client_id": KEY, "client_secret": SECRET}, {})
    assert status == 200 and body["token_type"] == "Bearer"


async def test_user_checks(kisc: Kisc) -> None:
    assert_oauth_error(
        await kisc.token({**LOGIN, "password": "nope"}),
        400,
        "invalid_grant",
        "Authentication failed for bank-user",
    )
    # The client certificate's CN (bank-user) must be the user logging in.
    kisc.gw.users["other-user"] = "other-password"
    assert_oauth_error(
        await kisc.token({**LOGIN, "username": "other-user", "password": "other-password"}),
        400,
        "invalid_grant",
        "Certificate CN does not match the user",
    )
    other_cert = issue_kisc_client(kisc.pki, "other-user")
    connector = aiohttp.TCPConnector(ssl=kisc.pki.client_ssl_context(other_cert))
    async with aiohttp.ClientSession(connector=connector) as other:
        form = {**LOGIN, "username": "other-user", "password": "other-password"}
        status, body = await kisc.token(form, http=other)
        assert status == 200, body
        status, body = await kisc.token(LOGIN, http=other)
        assert (status, body["error"]) == (400, "invalid_grant")


async def test_user_name_is_the_cn_without_the_system_prefix(kisc: Kisc) -> None:
    # KISC: the portal user name is the certificate's CN "without the system prefix".
    prefixed = issue_kisc_client(kisc.pki, USER, system_prefix=SANDBOX_SYSTEM_PREFIX)
    assert prefixed.cert.subject.rfc4514_string().startswith(f"CN={SANDBOX_SYSTEM_PREFIX}{USER}")
    connector = aiohttp.TCPConnector(ssl=kisc.pki.client_ssl_context(prefixed))
    async with aiohttp.ClientSession(connector=connector) as http:
        status, body = await kisc.token(LOGIN, http=http)
        assert status == 200, body
        # The CN as a whole is not the portal user; nor is a name the CN merely ends with.
        kisc.gw.users["user"] = PASSWORD
        status, body = await kisc.token({**LOGIN, "username": "user"}, http=http)
        assert (status, body["error_description"]) == (
            400,
            "Certificate CN does not match the user",
        )
        form = {**LOGIN, "username": SANDBOX_SYSTEM_PREFIX + USER}
        status, body = await kisc.token(form, http=http)
        assert (status, body["error"]) == (400, "invalid_grant")


async def test_grant_type_errors(kisc: Kisc) -> None:
    assert_oauth_error(
        await kisc.token({"grant_type": "client_credentials"}),
        400,
        "unsupported_grant_type",
        "Unsupported grant_type value",
    )
    assert_oauth_error(
        await kisc.token({"username": USER}),
        400,
        "invalid_request",
        "Missing grant_type parameter value",
    )
    assert_oauth_error(
        await kisc.token({"grant_type": "password", "username": USER}),
        400,
        "invalid_request",
        "Missing parameters: password",
    )
    assert kisc.gw.stats()["by_grant"] == {
        "client_credentials": 1,
        "(missing)": 1,
        "password": 1,
    }


async def test_tls_requires_a_client_cert_from_the_sandbox_ca(kisc: Kisc, tmp_path: Path) -> None:
    foreign_pki = Pki(tmp_path / "foreign", name="foreign CA")
    foreign = foreign_pki.issue_client("bank", common_name=USER)
    contexts = [kisc.pki.client_ssl_context(), kisc.pki.client_ssl_context()]
    contexts[1].load_cert_chain(foreign.cert_file, foreign.key_file)
    for ctx in contexts:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                await kisc.token(LOGIN, http=http)
    assert kisc.gw.stats()["calls"] == 0
    await kisc.login()  # the sandbox's own client cert still works
    assert kisc.gw.stats()["calls"] == 1


async def test_concurrent_logins_share_the_token(make_kisc: KiscFactory) -> None:
    kisc = await make_kisc(latency=0.3)
    bodies = await asyncio.gather(*(kisc.login() for _ in range(3)))
    assert len({b["access_token"] for b in bodies}) == 1
    stats = kisc.gw.stats()
    assert stats["max_concurrent"] == 3
    assert [e["status"] for e in stats["events"]] == [200, 200, 200]
    assert all(e["end"] - e["start"] >= 0.3 for e in stats["events"])


async def test_revoke(kisc: Kisc) -> None:
    tokens = await kisc.login()
    async with kisc.http.post(
        kisc.url("/revoke"), data={"token": tokens["access_token"]}, headers=basic("x", "y")
    ) as resp:
        assert resp.status == 401
    assert kisc.gw.is_access_token_valid(tokens["access_token"])
    async with kisc.http.post(
        kisc.url("/revoke"), data={"token": tokens["access_token"]}, headers=basic()
    ) as resp:
        assert resp.status == 200 and await resp.read() == b""
    assert not kisc.gw.is_access_token_valid(tokens["access_token"])
    assert (await kisc.refresh(tokens["refresh_token"]))[0] == 400
    assert (await kisc.login())["access_token"] != tokens["access_token"]


# -- the messages API ----------------------------------------------------------------------


async def test_missing_and_bad_tokens(kisc: Kisc) -> None:
    big = os.urandom(1024 * 1024)  # read and discarded: the client sees the 401, not a reset
    status, headers, body, ctype = await kisc.call("POST", data=big)
    assert status == 401 and ctype == "application/json"
    fault = fault_json(body)
    assert fault["code"] == 900902 and fault["message"] == "Missing Credentials"
    assert "Authorization : Bearer ACCESS_TOKEN" in fault["description"]
    assert headers["WWW-Authenticate"] == CHALLENGE

    status, headers, body, ctype = await kisc.call("POST", data=big, headers=bearer("bogus"))
    assert status == 401 and ctype == "application/json"
    report = kisc.gw.last_request
    assert report is not None and report["status"] == 401
    assert report["body_sha256"] == hashlib.sha256(big).hexdigest()
    assert report["body_length"] == len(big)
    assert fault_json(body) == {
        "code": 900901,
        "message": "Invalid Credentials",
        "description": INVALID_DESCRIPTION,
    }
    assert headers["WWW-Authenticate"] == CHALLENGE

    kisc.gw.fault_format = "xml"
    status, headers, body, ctype = await kisc.call("GET", headers=bearer("bogus"))
    assert status == 401 and ctype == "application/xml"
    assert headers["WWW-Authenticate"] == CHALLENGE
    root = ET.fromstring(body)
    assert root.tag == f"{AMS}fault"
    assert [child.tag for child in root] == [f"{AMS}code", f"{AMS}message", f"{AMS}description"]
    assert root.findtext(f"{AMS}code") == "900901"
    assert root.findtext(f"{AMS}message") == "Invalid Credentials"
    assert root.findtext(f"{AMS}description") == INVALID_DESCRIPTION
    assert body.startswith(b'<ams:fault xmlns:ams="http://wso2.org/apimanager/security">')

    stats = kisc.gw.stats()
    assert stats["rejected"] == 3 and stats["requests"] == 3
    assert stats["last_request"]["status"] == 401


async def test_post_list_and_get_message(kisc: Kisc) -> None:
    token = (await kisc.login())["access_token"]
    padding = b"<Pad>" + b"x" * (300 * 1024) + b"</Pad>"
    message = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Envelope>'
        b'<AppHdr xmlns="urn:iso:std:iso:20022:tech:xsd:head.001.001.01">'
        b"<Fr><FIId><FinInstnId><Othr><Id>K0531900</Id><SchmeNm><Prtry>KZGRO</Prtry>"
        b"</SchmeNm></Othr></FinInstnId></FIId></Fr>"
        b"<MsgDefIdr>pacs.008.001.08</MsgDefIdr></AppHdr>" + padding + b"</Envelope>"
    )
    headers = {
        **bearer(token),
        "x-idempotency-key": "ID-KEY-007",
        "x-fapi-interaction-id": "ID-INT-007",
        "Content-Type": "application/xml",
        "Accept": "application/xml",
    }
    status, _, body, _ = await kisc.call("POST", data=message, headers=headers)
    assert (status, body) == (202, b"")

    report = kisc.gw.last_request
    assert report is not None
    assert report["method"] == "POST" and report["path"] == MESSAGES
    assert report["headers"]["x-idempotency-key"] == "ID-KEY-007"
    assert report["headers"]["authorization"] == f"Bearer {token}"
    assert report["body_sha256"] == hashlib.sha256(message).hexdigest()
    assert report["body_length"] == len(message)
    assert report["client_cert"]["subject"] == kisc.client_cert.cert.subject.rfc4514_string()
    assert report["token_user"] == USER and report["status"] == 202

    assert kisc.gw.message("ID-KEY-007") == message  # handed to KISC as sent

    # The list holds the unread incoming messages only: not the bank's own POST.
    # Without the trailing slash too.
    assert await unread_keys(kisc, token, "/etsfo/1.0.0/messages") == [
        "GRO2021051114103",
        "GRO2021051114106",
    ]
    status, _, listing, ctype = await kisc.call("GET", headers=bearer(token))
    assert status == 200 and ctype == "application/xml"
    seeded = ET.fromstring(listing).findall(f"{SOAP}Body/Data/{DS}MESSAGES")[0]
    assert seeded.findtext(f"{DS}MESSAGE_TYPE") == "camt.054.001.07"
    assert seeded.findtext(f"{DS}RSENDER") == "KZGRO.SGROSS00"
    assert seeded.findtext(f"{DS}CONTENTTYPE") == "application/xml"
    assert seeded.findtext(f"{DS}RSTATUS") == "0" and seeded.findtext(f"{DS}RLASTERR") == "0"
    assert seeded.find(f"{DS}INTERACTION_ID") is not None

    # Reading one marks it read: it leaves the list, and can still be fetched again.
    for _ in range(2):
        status, _, inbound, ctype = await kisc.call(
            "GET", MESSAGES + "GRO2021051114106", headers=bearer(token)
        )
        assert (status, ctype) == (200, "application/xml")
        assert ET.fromstring(inbound).tag == "Data"
        assert b"<BizMsgIdr>GRO2021051114106</BizMsgIdr>" in inbound
    assert await unread_keys(kisc, token) == ["GRO2021051114103"]
    assert kisc.gw.stats()["unread"] == 1

    # The bank's own message is not in its inbox.
    for key in ("ID-KEY-007", "nope"):
        status, _, body, ctype = await kisc.call("GET", MESSAGES + key, headers=bearer(token))
        assert status == 404 and ctype == "application/json"
        assert json.loads(body)["message"] == "Not Found"
    assert kisc.gw.stats()["requests"] == 8


async def unread_keys(kisc: Kisc, token: str, path: str = MESSAGES) -> list[str | None]:
    status, _, listing, _ = await kisc.call("GET", path, headers=bearer(token))
    assert status == 200
    items = ET.fromstring(listing).findall(f"{SOAP}Body/Data/{DS}MESSAGES")
    return [item.findtext(f"{DS}IDEMPOTENCY_KEY") for item in items]


async def test_delivered_message_is_listed_until_read(kisc: Kisc) -> None:
    token = (await kisc.login())["access_token"]
    incoming = (
        b"<Data><Envelope><AppHdr><Fr><FIId><FinInstnId><Othr><Id>K0000014</Id><SchmeNm>"
        b"<Prtry>KZGRO</Prtry></SchmeNm></Othr></FinInstnId></FIId></Fr>"
        b"<BizMsgIdr>GRO2026000001</BizMsgIdr><MsgDefIdr>pacs.002.001.11</MsgDefIdr>"
        b"</AppHdr></Envelope></Data>"
    )
    async with kisc.http.post(kisc.url("/_sandbox/deliver"), data=incoming) as resp:
        assert resp.status == 200
        assert await resp.json() == {"key": "GRO2026000001", "unread": 3}
    assert (await unread_keys(kisc, token))[-1] == "GRO2026000001"
    status, _, body, _ = await kisc.call("GET", MESSAGES + "GRO2026000001", headers=bearer(token))
    assert (status, body) == (200, incoming)
    assert "GRO2026000001" not in await unread_keys(kisc, token)


async def test_idempotency_key_rules(kisc: Kisc) -> None:
    token = (await kisc.login())["access_token"]
    status, _, body, _ = await kisc.call("POST", data=b"<a/>", headers=bearer(token))
    assert status == 400
    assert json.loads(body) == {"error": "missing x-idempotency-key"}
    assert kisc.gw.stats()["missing_idempotency"] == 1

    headers = {**bearer(token), "x-idempotency-key": "K-1"}
    assert (await kisc.call("POST", data=b"<first/>", headers=headers))[0] == 202
    assert (await kisc.call("POST", data=b"<second/>", headers=headers))[0] == 202
    stats = kisc.gw.stats()
    assert stats["duplicate_posts"] == 1 and stats["messages"] == 3
    assert kisc.gw.message("K-1") == b"<first/>"
    assert stats["last_request"]["duplicate"] is True

    kisc.gw.max_message_bytes = 1000
    big = {**bearer(token), "x-idempotency-key": "K-big"}
    status, _, _, _ = await kisc.call("POST", data=b"x" * 5000, headers=big)
    assert status == 413
    assert kisc.gw.message("K-big") is None
    assert kisc.gw.last_request is not None and kisc.gw.last_request["body_length"] == 5000


async def test_unknown_resources(kisc: Kisc) -> None:
    token = (await kisc.login())["access_token"]
    for method, path in (
        ("POST", "/etsfo/1.0.0/messegas"),  # the seed's typo is not a resource
        ("DELETE", MESSAGES),
        ("POST", MESSAGES + "K-1"),
        ("GET", "/token"),
    ):
        status, _, body, _ = await kisc.call(method, path, headers=bearer(token), data=b"<a/>")
        assert status == 404, (method, path)
        assert fault_json(body)["code"] == 900906
    assert kisc.gw.stats()["rejected"] == 0


async def test_force_fault(kisc: Kisc) -> None:
    token = (await kisc.login())["access_token"]
    kisc.gw.force_fault(900908)
    status, headers, body, _ = await kisc.call("GET", headers=bearer(token))
    assert status == 403 and "WWW-Authenticate" not in headers
    fault = fault_json(body)
    assert fault["code"] == 900908 and fault["message"] == "Resource forbidden"
    assert (await kisc.call("GET", headers=bearer(token)))[0] == 200

    expected = {900901: 401, 900906: 404, 900909: 403, 900910: 403, 900802: 429, 900805: 403}
    for code, http_status in expected.items():
        kisc.gw.force_fault(code)
        status, headers, body, _ = await kisc.call("GET", headers=bearer(token))
        assert (status, fault_json(body)["code"]) == (http_status, code)
        assert (status == 401) == ("WWW-Authenticate" in headers)
    assert fault_json(body)["message"] == FAULTS[900805].message == "Message blocked"

    kisc.gw.force_fault(900802, count=2)
    kisc.gw.fault_format = "xml"
    for _ in range(2):
        status, _, body, _ = await kisc.call("GET", headers=bearer(token))
        assert status == 429
        root = ET.fromstring(body)
        ns = "{http://wso2.org/apimanager/throttling}"
        assert root.findtext(f"{ns}message") == "Message throttled out"
        assert root.findtext(f"{ns}nextAccessTime", "").endswith("UTC")
    assert (await kisc.call("GET", headers=bearer(token)))[0] == 200
    with pytest.raises(ValueError):
        kisc.gw.force_fault(123)


async def test_expire_tokens(kisc: Kisc) -> None:
    tokens = await kisc.login()
    assert kisc.gw.expire_tokens() == 1
    status, _, body, _ = await kisc.call("GET", headers=bearer(tokens["access_token"]))
    assert status == 401 and fault_json(body)["code"] == 900901
    # Refresh tokens survive; the login after expiry gets a new pair.
    status, refreshed = await kisc.refresh(tokens["refresh_token"])
    assert status == 200, refreshed
    assert (await kisc.call("GET", headers=bearer(refreshed["access_token"])))[0] == 200


async def test_access_token_expiry_is_subsecond(make_kisc: KiscFactory) -> None:
    kisc = await make_kisc(access_ttl=0.5)
    started = time.monotonic()
    tokens = await kisc.login()
    assert tokens["expires_in"] == 0  # floor(0.5)
    await asyncio.sleep(max(0.0, 0.3 - (time.monotonic() - started)))
    assert kisc.gw.is_access_token_valid(tokens["access_token"])
    assert (await kisc.call("GET", headers=bearer(tokens["access_token"])))[0] == 200
    await asyncio.sleep(max(0.0, 0.55 - (time.monotonic() - started)))
    assert not kisc.gw.is_access_token_valid(tokens["access_token"])
    status, _, body, _ = await kisc.call("GET", headers=bearer(tokens["access_token"]))
    assert status == 401 and fault_json(body)["code"] == 900901
    # A new access token; the still-valid refresh token is carried over unchanged.
    again = await kisc.login()
    assert again["access_token"] != tokens["access_token"]
    assert again["refresh_token"] == tokens["refresh_token"]
    status, refreshed = await kisc.refresh(tokens["refresh_token"])
    assert status == 200 and refreshed["refresh_token"] != tokens["refresh_token"]


async def test_token_with_a_second_or_less_left_is_not_handed_back(
    make_kisc: KiscFactory,
) -> None:
    kisc = await make_kisc(access_ttl=1.5)
    first = await kisc.login()
    await asyncio.sleep(0.6)  # 0.9 s left: WSO2 wants more than 1 s to reuse a token
    second = await kisc.login()
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] == first["refresh_token"]
    assert second["expires_in"] == 1
    assert not kisc.gw.is_access_token_valid(first["access_token"])
    assert kisc.gw.is_access_token_valid(second["access_token"])


async def test_timestamp_skew_shortens_reused_tokens(make_kisc: KiscFactory) -> None:
    kisc = await make_kisc(access_ttl=10, timestamp_skew=5)
    first = await kisc.login()
    assert first["expires_in"] == 10
    second = await kisc.login()
    assert second["access_token"] == first["access_token"]
    assert second["expires_in"] == 4  # floor(10 - elapsed - 5)
    kisc.gw.timestamp_skew = 9.5  # under 1 s left after the skew: a new token
    third = await kisc.login()
    assert third["access_token"] != first["access_token"]
    assert third["expires_in"] == 10


# -- controls ------------------------------------------------------------------------------


async def test_http_controls(kisc: Kisc) -> None:
    http = kisc.http
    tokens = await kisc.login()

    async with http.post(kisc.url("/_sandbox/fault"), params={"code": "900908"}) as r:
        assert await r.json() == {"code": 900908, "count": 1}
    assert (await kisc.call("GET", headers=bearer(tokens["access_token"])))[0] == 403
    assert (await kisc.call("GET", headers=bearer(tokens["access_token"])))[0] == 200
    async with http.post(kisc.url("/_sandbox/fault"), params={"code": "1"}) as r:
        assert r.status == 400

    async with http.post(kisc.url("/_sandbox/expire")) as r:
        assert await r.json() == {"expired": 1}
    assert (await kisc.call("GET", headers=bearer(tokens["access_token"])))[0] == 401

    async with http.post(kisc.url("/_sandbox/fail"), params={"status": "503", "count": "1"}) as r:
        assert await r.json() == {"status": 503, "count": 1}
    status, body = await kisc.token(LOGIN)
    assert (status, body["error"]) == (503, "server_error")
    assert (await kisc.token(LOGIN))[0] == 200

    async with http.post(kisc.url("/_sandbox/hang"), params={"enabled": "1"}) as r:
        assert await r.json() == {"hang": True}
    call = asyncio.create_task(kisc.login())
    await asyncio.sleep(0.2)
    assert not call.done()
    async with http.post(kisc.url("/_sandbox/hang"), params={"enabled": "0"}) as r:
        assert await r.json() == {"hang": False}
    await asyncio.wait_for(call, 2)

    async with http.post(kisc.url("/_sandbox/settings"), json={"fault_format": "xml"}) as r:
        assert (await r.json())["fault_format"] == "xml"
    status, _, _, ctype = await kisc.call("GET")
    assert (status, ctype) == (401, "application/xml")
    for bad in ({"fault_format": "yaml"}, {"bogus": 1}, {"access_ttl": "long"}):
        async with http.post(kisc.url("/_sandbox/settings"), json=bad) as r:
            assert r.status == 400

    async with http.get(kisc.url("/_sandbox/stats")) as r:
        stats = await r.json()
    assert stats["calls"] == 4 and stats["by_grant"] == {"password": 4}
    assert [e["status"] for e in stats["events"]] == [200, 503, 200, 200]
    assert stats["requests"] == 4 and stats["rejected"] == 2
    assert stats["last_request"]["status"] == 401
    async with http.post(kisc.url("/_sandbox/stats/reset")) as r:
        reset = await r.json()
    assert reset["calls"] == 0 and reset["requests"] == 0 and reset["events"] == []
    assert reset["last_request"] is None


async def test_stop_releases_hung_token_calls(kisc: Kisc) -> None:
    kisc.gw.hang(True)
    call = asyncio.create_task(kisc.token(LOGIN))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await kisc.server.stop()
    assert time.monotonic() - started < 1.5
    status, body = await asyncio.wait_for(call, 2)
    assert (status, body["error"]) == (503, "server_error")


async def test_start_helpers(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert = issue_kisc_client(pki, "K0531900@kisc")
    cn = cert.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "K0531900@kisc" and cert.cert_file.exists()
    gw, server = await start_wso2(pki, consumer_key="ck", consumer_secret="cs", access_ttl=60)
    try:
        assert server.url == f"https://127.0.0.1:{server.port}"
        assert (pki.directory / "kisc-gw.crt").exists()
        gw.users["K0531900@kisc"] = "pw"
        connector = aiohttp.TCPConnector(ssl=pki.client_ssl_context(cert))
        async with aiohttp.ClientSession(connector=connector) as http:
            form = {"grant_type": "password", "username": "K0531900@kisc", "password": "pw"}
            async with http.post(
                server.url + "/token", data=form, headers=basic("ck", "cs")
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["expires_in"] == 60
    finally:
        await server.stop()
