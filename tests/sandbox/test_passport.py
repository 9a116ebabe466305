"""MOEX Passport and the Keycloak ``grant_type_moex=passport`` login, over real TLS."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from sidecar.sandbox.keycloak import KeycloakEmulator
from sidecar.sandbox.moex import MoexStack, start_moex_registration
from sidecar.sandbox.passport import COOKIE_NAME
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.servers import TlsServer

USER = "trader@example.com"
PASSWORD = "passport-password"
CLIENT_ID = "moex_registration"
CLIENT_SECRET = "registration-secret"


def sign_detached(data: bytes, signer: IssuedCert, *, detached: bool = True) -> str:
    """A CMS signature over ``data`` (detached unless asked), DER, base64 on one line."""
    key = serialization.load_pem_private_key(signer.key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    options = [pkcs7.PKCS7Options.Binary]
    if detached:
        options.append(pkcs7.PKCS7Options.DetachedSignature)
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(signer.cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, options)
    )
    return base64.b64encode(der).decode("ascii")


@dataclass
class Moex:
    pki: Pki
    kc: KeycloakEmulator
    stack: MoexStack
    http: aiohttp.ClientSession
    token_url: str

    async def authenticate(
        self, user: str = USER, password: str = PASSWORD
    ) -> tuple[aiohttp.ClientResponse, str]:
        """GET /authenticate without following redirects; the raw Set-Cookie header."""
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        async with self.http.get(
            self.stack.passport_url,
            headers={"Authorization": f"Basic {basic}"},
            allow_redirects=False,
        ) as resp:
            await resp.read()
            return resp, resp.headers.get("Set-Cookie", "")

    async def passport_token(self) -> str:
        resp, _ = await self.authenticate()
        assert resp.status == 200
        return resp.cookies[COOKIE_NAME].value

    def form(self, token: str, signature: str, **overrides: str) -> dict[str, str]:
        return {
            "grant_type": "password",
            "grant_type_moex": "passport",
            "scope": "client_registration",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "certificate": token,
            "algorithm": "RSA",
            "signature": signature,
            **overrides,
        }

    async def post(self, form: dict[str, str] | str) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with self.http.post(self.token_url, data=form, headers=headers) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()


@pytest.fixture
async def moex(tmp_path: Path) -> AsyncIterator[Moex]:
    pki = Pki(tmp_path)
    kc = KeycloakEmulator()
    stack = await start_moex_registration(pki, kc)
    idp_server = TlsServer(kc.app, pki.server_ssl_context(pki.issue_server("idp")))
    await idp_server.start()
    # A cookie jar that keeps nothing: each test reads Set-Cookie itself.
    connector = aiohttp.TCPConnector(ssl=pki.client_ssl_context())
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        yield Moex(pki, kc, stack, http, idp_server.url + kc.token_path)
    await idp_server.stop()
    await stack.stop()


def assert_denied(status: int, body: dict[str, Any], description: str) -> None:
    assert (status, body["error"]) == (403, "access_denied"), body
    assert description in body["error_description"]


# -- Passport --------------------------------------------------------------------------------


async def test_authenticate_sets_awkward_cookie(moex: Moex) -> None:
    resp, raw = await moex.authenticate()
    assert resp.status == 200
    assert resp.headers["X-MicexPassport-Marker"] == "granted"
    token = resp.cookies[COOKIE_NAME].value
    # Sent bare, not quoted, with the characters a client must URL-encode.
    assert raw.startswith(f"{COOKIE_NAME}={token}; ")
    assert "+" in token and "/" in token and token.endswith("=")
    base64.b64decode(token, validate=True)
    attributes = {part.split("=", 1)[0]: part for part in raw.split("; ")[1:]}
    assert set(attributes) == {"Expires", "Max-Age", "Path", "HttpOnly", "Secure"}
    assert attributes["Max-Age"] == "Max-Age=3600" and attributes["Path"] == "Path=/"
    expires = parsedate_to_datetime(attributes["Expires"].split("=", 1)[1]).timestamp()
    assert abs(expires - (time.time() + 3600)) < 5

    assert moex.stack.passport.token_valid(token) == USER
    assert list(moex.stack.passport.issued) == [token]
    second = await moex.passport_token()
    assert second != token and moex.stack.passport.token_valid(second) == USER
    assert moex.stack.passport.stats()["granted"] == 2


async def test_authenticate_redirect_variant(moex: Moex) -> None:
    settings_url = moex.stack.passport_url.replace("/authenticate", "/_sandbox/settings")
    async with moex.http.post(settings_url, json={"redirect": True}) as r:
        assert (await r.json())["redirect"] is True
    resp, raw = await moex.authenticate()
    assert resp.status == 302
    assert resp.headers["Location"] == "/"
    assert resp.headers["X-MicexPassport-Marker"] == "granted"
    token = resp.cookies[COOKIE_NAME].value
    assert raw.startswith(f"{COOKIE_NAME}={token}; ")
    assert moex.stack.passport.token_valid(token) == USER


async def test_authenticate_bad_credentials(moex: Moex) -> None:
    for user, password in ((USER, "wrong"), ("ghost@example.com", PASSWORD)):
        resp, raw = await moex.authenticate(user, password)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="MOEX Passport"'
        assert resp.headers["X-MicexPassport-Marker"] == "denied"
        assert raw == ""
    async with moex.http.get(moex.stack.passport_url) as resp:  # no credentials at all
        assert resp.status == 401
        assert "Set-Cookie" not in resp.headers
    stats = moex.stack.passport.stats()
    assert (stats["calls"], stats["granted"], stats["denied"]) == (3, 0, 3)
    assert not moex.stack.passport.issued


async def test_passport_token_expiry(moex: Moex) -> None:
    moex.stack.passport.token_ttl = 0.3
    resp, raw = await moex.authenticate()
    token = resp.cookies[COOKIE_NAME].value
    assert "Max-Age=0;" in raw  # rounded down: never promises more than it keeps
    assert moex.stack.passport.token_valid(token) == USER
    await asyncio.sleep(0.4)
    assert moex.stack.passport.token_valid(token) is None

    moex.stack.passport.token_ttl = 3600
    token = await moex.passport_token()
    assert moex.stack.passport.expire_tokens() == 1
    assert moex.stack.passport.token_valid(token) is None


async def test_passport_fail_and_hang_controls(moex: Moex) -> None:
    moex.stack.passport.fail_with(503, count=1)
    assert (await moex.authenticate())[0].status == 503
    assert (await moex.authenticate())[0].status == 200
    moex.stack.passport.hang(True)
    call = asyncio.create_task(moex.authenticate())
    await asyncio.sleep(0.2)
    assert not call.done()
    moex.stack.passport.hang(False)
    assert (await asyncio.wait_for(call, 2))[0].status == 200
    stats_url = moex.stack.passport_url.replace("/authenticate", "/_sandbox/stats")
    async with moex.http.get(stats_url) as r:
        stats = await r.json()
    assert (stats["calls"], stats["granted"], stats["live_tokens"]) == (3, 2, 2)


# -- Keycloak grant_type_moex=passport ------------------------------------------------------


async def test_passport_login_issues_tokens_and_refreshes(moex: Moex) -> None:
    token = await moex.passport_token()
    signature = sign_detached(token.encode(), moex.stack.signer)
    status, body = await moex.post(moex.form(token, signature))
    assert status == 200, body
    assert {"access_token", "refresh_token", "expires_in", "session_state"} <= set(body)
    assert "client_registration" in body["scope"].split()
    claims = moex.kc.introspect(body["access_token"])
    assert claims is not None
    assert (claims["preferred_username"], claims["azp"]) == (USER, CLIENT_ID)
    assert moex.kc.stats()["by_grant"] == {"passport": 1}

    status, refreshed = await moex.post(
        {
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
    )
    assert status == 200, refreshed
    assert refreshed["session_state"] == body["session_state"]
    assert refreshed["scope"] == body["scope"]
    assert moex.kc.is_access_token_valid(refreshed["access_token"])
    assert moex.kc.stats()["by_grant"] == {"passport": 1, "refresh_token": 1}


async def test_signature_over_other_bytes(moex: Moex) -> None:
    token = await moex.passport_token()
    signature = sign_detached(token.encode() + b"\n", moex.stack.signer)
    status, body = await moex.post(moex.form(token, signature))
    assert_denied(status, body, "signature does not verify")
    # The URL-encoded form of the token is not the token either.
    signature = sign_detached(quote(token, safe="").encode(), moex.stack.signer)
    assert_denied(*await moex.post(moex.form(token, signature)), "signature does not verify")
    # The right bytes, but an attached signature: MOEX asks for a detached one.
    signature = sign_detached(token.encode(), moex.stack.signer, detached=False)
    assert_denied(*await moex.post(moex.form(token, signature)), "signature must be detached")


async def test_signature_by_certificate_of_another_ca(moex: Moex, tmp_path: Path) -> None:
    stranger = Pki(tmp_path / "other", name="someone else's CA").issue_client("x", USER)
    token = await moex.passport_token()
    status, body = await moex.post(moex.form(token, sign_detached(token.encode(), stranger)))
    assert_denied(status, body, "signature does not verify: certificate")


async def test_signature_by_unregistered_sandbox_certificate(moex: Moex) -> None:
    other = moex.pki.issue_client("other-signer", USER)  # same CA, same name, other key
    token = await moex.passport_token()
    status, body = await moex.post(moex.form(token, sign_detached(token.encode(), other)))
    assert_denied(status, body, f"the signer is not the certificate registered for {USER}")


async def test_unknown_or_expired_passport_token(moex: Moex) -> None:
    signer = moex.stack.signer
    fake = base64.b64encode(b"\xfb\xff" * 40).decode()
    status, body = await moex.post(moex.form(fake, sign_detached(fake.encode(), signer)))
    assert_denied(status, body, "Unknown or expired MOEX Passport token")
    token = await moex.passport_token()
    moex.stack.passport.expire_tokens()
    status, body = await moex.post(moex.form(token, sign_detached(token.encode(), signer)))
    assert_denied(status, body, "Unknown or expired MOEX Passport token")


async def test_client_authentication(moex: Moex) -> None:
    token = await moex.passport_token()
    signature = sign_detached(token.encode(), moex.stack.signer)
    # MOEX answers 403 to a bad client_id or client_secret, as to a bad signature: not
    # Keycloak's usual 401 invalid_client.
    status, body = await moex.post(moex.form(token, signature, client_secret="wrong"))
    assert_denied(status, body, "Invalid client or Invalid client credentials")
    status, body = await moex.post(moex.form(token, signature, client_id="nobody"))
    assert_denied(status, body, "Invalid client or Invalid client credentials")
    status, body = await moex.post(moex.form(token, signature, client_id=""))
    assert_denied(status, body, "Missing client_id parameter")
    # A public client cannot log in by Passport: MOEX issues a secret per application.
    status, body = await moex.post(moex.form(token, signature, client_id="LK_NTB_PUBLIC"))
    assert_denied(status, body, "requires a confidential client")


async def test_signature_encoding_errors(moex: Moex) -> None:
    token = await moex.passport_token()
    signature = sign_detached(token.encode(), moex.stack.signer)
    wrapped = "\r\n".join(signature[i : i + 64] for i in range(0, len(signature), 64))
    status, body = await moex.post(moex.form(token, wrapped))
    assert_denied(status, body, "signature must be base64 without line breaks")
    # Values sent without URL-encoding: every "+" arrives as a space.
    raw = "&".join(f"{k}={v}" for k, v in moex.form(token, signature).items())
    status, body = await moex.post(raw)
    assert_denied(status, body, "was a '+' sent without URL-encoding?")
    # The correctly encoded form still works with the same token and signature.
    assert (await moex.post(moex.form(token, signature)))[0] == 200


async def test_gost_and_missing_fields(moex: Moex) -> None:
    token = await moex.passport_token()
    signature = sign_detached(token.encode(), moex.stack.signer)
    status, body = await moex.post(moex.form(token, signature, algorithm="GOST"))
    assert (status, body) == (
        403,
        {
            "error": "access_denied",
            "error_description": "GOST signatures are not supported by the sandbox; use RSA",
        },
    )
    status, body = await moex.post(moex.form(token, signature, algorithm="rsa"))
    assert_denied(status, body, "algorithm must be GOST or RSA")
    form = moex.form(token, signature)
    del form["scope"]
    assert_denied(*await moex.post(form), "Missing parameter: scope")
    stats = moex.kc.stats()
    assert stats["by_grant"] == {"passport": 3}
    assert [e["status"] for e in stats["events"]] == [403, 403, 403]
