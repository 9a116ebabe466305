"""The ИС МПТ emulator over real TLS: auth/key → attached CMS → simpleSignIn, the bearer-only
API, every sign-in refusal and the sandbox controls."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from sidecar.sandbox.mpt import DEFAULT_BASE_PATH, MptApi, start_mpt
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.servers import TlsServer

BASE = DEFAULT_BASE_PATH
SIGNER_CN = "Жұлдыз Ибраева"  # non-ASCII on purpose: the JWT must carry it intact


@dataclass
class Mpt:
    pki: Pki
    api: MptApi
    server: TlsServer
    http: aiohttp.ClientSession
    signer: IssuedCert

    def url(self, path: str) -> str:
        return f"{self.server.url}{BASE}{path}"

    async def key(self) -> tuple[str, str]:
        async with self.http.get(self.url("/auth/key")) as resp:
            assert resp.status == 200
            body = await resp.json()
        return body[self.api.uuid_field], body["data"]

    async def sign_in(self, challenge_id: str, cms: str, **extra: Any) -> tuple[int, dict]:
        payload = {"uuid": challenge_id, "data": cms, **extra}
        async with self.http.post(self.url("/auth/simpleSignIn"), json=payload) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()

    async def login(self, **extra: Any) -> str:
        challenge_id, data = await self.key()
        status, body = await self.sign_in(challenge_id, sign(self.signer, data.encode()), **extra)
        assert status == 200, body
        return body[self.api.token_field]

    async def call(
        self, method: str, path: str, token: str | None, body: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.http.request(method, self.url(path), data=body, headers=headers) as resp:
            return resp.status, await resp.json()


def sign(cert: IssuedCert, data: bytes, *, detached: bool = False) -> str:
    """What a client does: CMS over the exact bytes, signer cert included, base64 DER."""
    key = serialization.load_pem_private_key(cert.key_file.read_bytes(), password=None)
    assert isinstance(key, pkcs7.PKCS7PrivateKeyTypes)
    options = [pkcs7.PKCS7Options.Binary]
    if detached:
        options.append(pkcs7.PKCS7Options.DetachedSignature)
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(cert.cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, options)
    )
    return base64.b64encode(der).decode("ascii")


def claims(token: str) -> dict[str, Any]:
    header, payload, _ = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "=="))["alg"] == "HS256"
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def refusal(code: int) -> dict[str, Any]:
    return {"error_message": f"Ошибка авторизации. Код ошибки: {code}", "code": code}


@pytest.fixture
async def make_mpt(tmp_path: Path) -> AsyncIterator[Any]:
    servers: list[TlsServer] = []
    pki = Pki(tmp_path / "pki")
    signer = pki.issue_client("trader", SIGNER_CN)

    async def make(**settings: Any) -> Mpt:
        api, server = await start_mpt(pki, **settings)
        servers.append(server)
        return Mpt(pki, api, server, http, signer)

    connector = aiohttp.TCPConnector(ssl=pki.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def mpt(make_mpt: Any) -> Mpt:
    return await make_mpt()


async def test_uuid_spelled_as_in_the_guide_tables(mpt: Mpt) -> None:
    # The guide's tables write "UUID"; the answer can, and sign-in takes either case.
    mpt.api.uuid_field = "UUID"
    challenge_id, data = await mpt.key()
    payload = {"UUID": challenge_id, "data": sign(mpt.signer, data.encode())}
    async with mpt.http.post(mpt.url("/auth/simpleSignIn"), json=payload) as resp:
        assert resp.status == 200, await resp.text()
        assert mpt.api.last_signin is not None and mpt.api.last_signin["fields"] == {}


async def test_happy_path_token_and_api(mpt: Mpt) -> None:
    challenge_id, data = await mpt.key()
    assert uuid.UUID(challenge_id).version == 4
    # A random string in base64, as MPT's guide describes `data` (32 random bytes here).
    assert len(base64.b64decode(data, validate=True)) == 32
    assert data.endswith("=")
    status, body = await mpt.sign_in(challenge_id, sign(mpt.signer, data.encode()))
    assert status == 200 and set(body) == {"token"}, body
    token = body["token"]
    jwt = claims(token)
    assert jwt["sub"] == SIGNER_CN and "inn" not in jwt
    assert abs(jwt["exp"] - (time.time() + 36000)) < 5 and jwt["exp"] - jwt["iat"] in (35999, 36000)
    assert list(mpt.api.issued) == [token]

    status, echo = await mpt.call("GET", "/cises/info?cis=010463&x=%D0%B4", token)
    assert status == 200, echo
    assert (echo["method"], echo["path"]) == ("GET", f"{BASE}/cises/info")
    assert echo["query"] == "cis=010463&x=%D0%B4"
    assert echo["headers"]["authorization"] == f"Bearer {token}"
    assert echo["token_sub"] == SIGNER_CN and echo["client_cert"] is None
    document = b'{"document_format": "MANUAL"}' * 1000
    status, echo = await mpt.call("POST", "/lk/documents/create", token, document)
    assert status == 200
    assert echo["body_sha256"] == hashlib.sha256(document).hexdigest()
    assert echo["body_length"] == len(document)
    stats = mpt.api.stats()
    assert (stats["keys_issued"], stats["signins"], stats["requests"]) == (1, 1, 2)


async def test_api_wants_a_live_token_of_its_own(mpt: Mpt) -> None:
    token = await mpt.login()
    head, _, signature = token.split(".")
    forged_claims = {**claims(token), "sub": "someone else"}
    forged = json.dumps(forged_claims).encode()
    forged_payload = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    for bad in (None, "", "garbage", f"{head}.{forged_payload}.{signature}"):
        status, body = await mpt.call("POST", "/lk/documents/create", bad, b"x" * 300_000)
        assert (status, body) == (401, {"error_message": body["error_message"], "code": 401})
    status, _ = await mpt.call("GET", "/cises/info", token)
    assert status == 200
    async with mpt.http.get(f"{mpt.server.url}/elsewhere") as resp:
        assert resp.status == 404  # outside the base path: no API, no auth check
    assert mpt.api.stats()["unauthorized"] == 4


async def test_tokens_expire_after_token_ttl_and_on_demand(make_mpt: Any) -> None:
    mpt = await make_mpt(token_ttl=1)
    token = await mpt.login()
    assert claims(token)["exp"] - claims(token)["iat"] in (0, 1)
    assert (await mpt.call("GET", "/cises/info", token))[0] == 200
    await asyncio.sleep(1.1)
    assert (await mpt.call("GET", "/cises/info", token))[0] == 401

    async with mpt.http.post(f"{mpt.server.url}/_sandbox/settings", json={"token_ttl": 600}) as r:
        assert (await r.json())["token_ttl"] == 600
    token = await mpt.login()
    assert (await mpt.call("GET", "/cises/info", token))[0] == 200
    async with mpt.http.post(f"{mpt.server.url}/_sandbox/expire") as resp:
        assert (await resp.json()) == {"expired": 1}
    assert (await mpt.call("GET", "/cises/info", token))[0] == 401


async def test_a_challenge_is_single_use(mpt: Mpt) -> None:
    challenge_id, data = await mpt.key()
    cms = sign(mpt.signer, data.encode())
    assert (await mpt.sign_in(challenge_id, cms))[0] == 200
    status, body = await mpt.sign_in(challenge_id, cms)
    assert status == 403
    assert body == {**refusal(4), "description": "The challenge has already been used"}
    stats = mpt.api.stats()
    assert stats["reused"] == 1 and stats["rejected"] == {"challenge_used": 1}


async def test_detached_signature_is_refused_and_spends_the_challenge(mpt: Mpt) -> None:
    challenge_id, data = await mpt.key()
    status, body = await mpt.sign_in(challenge_id, sign(mpt.signer, data.encode(), detached=True))
    assert status == 403 and body.items() >= refusal(2).items(), body
    # The uuid is gone even though that attempt failed.
    status, body = await mpt.sign_in(challenge_id, sign(mpt.signer, data.encode()))
    assert status == 403 and body["code"] == 4


async def test_signed_content_must_be_the_challenge_data(mpt: Mpt) -> None:
    for wrong in (b"something else", None):
        challenge_id, data = await mpt.key()
        # None: the seed's "encode to base64, then sign" read literally; NCALayer decodes
        # it again, so signing the base64 text itself is a mistake.
        content = wrong if wrong is not None else base64.b64encode(data.encode())
        status, body = await mpt.sign_in(challenge_id, sign(mpt.signer, content))
        assert status == 403 and body.items() >= refusal(5).items(), body


async def test_signer_must_chain_to_the_sandbox_ca(mpt: Mpt, tmp_path: Path) -> None:
    stranger = Pki(tmp_path / "other", name="other CA").issue_client("x", "Stranger")
    challenge_id, data = await mpt.key()
    status, body = await mpt.sign_in(challenge_id, sign(stranger, data.encode()))
    assert status == 403 and body.items() >= refusal(6).items(), body
    assert "unable to get local issuer certificate" in body["description"]


async def test_expired_unknown_and_malformed(make_mpt: Any) -> None:
    mpt = await make_mpt(challenge_ttl=0.2)
    challenge_id, data = await mpt.key()
    await asyncio.sleep(0.3)
    status, body = await mpt.sign_in(challenge_id, sign(mpt.signer, data.encode()))
    assert status == 403 and body["code"] == 3

    status, body = await mpt.sign_in(str(uuid.uuid4()), sign(mpt.signer, data.encode()))
    assert status == 403 and body["code"] == 1
    challenge_id, _ = await mpt.key()
    status, body = await mpt.sign_in(challenge_id, "not base64!")
    assert status == 403 and body["code"] == 7

    url = mpt.url("/auth/simpleSignIn")
    challenge_id, data = await mpt.key()
    async with mpt.http.post(url, json={"uuid": challenge_id}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == 400
    async with mpt.http.post(url, data=b"{}", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
    async with mpt.http.get(url) as resp:
        assert resp.status == 405
    # A malformed request spends nothing: the challenge still works.
    assert (await mpt.sign_in(challenge_id, sign(mpt.signer, data.encode())))[0] == 200
    rejected = mpt.api.stats()["rejected"]
    assert rejected == {"challenge_expired": 1, "unknown_uuid": 1, "bad_base64": 1}


async def test_extra_fields_are_recorded_and_inn_goes_into_the_token(mpt: Mpt) -> None:
    token = await mpt.login(inn="123456789012", unitedToken=True)
    assert claims(token)["inn"] == "123456789012"
    last = mpt.api.stats()["last_signin"]
    assert last["fields"] == {"inn": "123456789012", "unitedToken": True}
    assert last["sub"] == SIGNER_CN
    signin_events = [e for e in mpt.api.stats()["events"] if e["endpoint"] == "signin"]
    assert signin_events[-1]["fields"]["inn"] == "123456789012"
    assert signin_events[-1]["status"] == 200


async def test_token_field_setting(make_mpt: Any) -> None:
    mpt = await make_mpt(token_field="access_token")
    challenge_id, data = await mpt.key()
    status, body = await mpt.sign_in(challenge_id, sign(mpt.signer, data.encode()))
    assert status == 200 and set(body) == {"access_token"}
    assert (await mpt.call("GET", "/cises/info", body["access_token"]))[0] == 200
    settings_url = f"{mpt.server.url}/_sandbox/settings"
    async with mpt.http.post(settings_url, json={"token_field": ""}) as resp:
        assert resp.status == 400
    with pytest.raises(ValueError):
        MptApi(mpt.pki.ca_file, token_field="")


async def test_fail_with_hang_and_latency_on_auth(mpt: Mpt) -> None:
    mpt.api.fail_with(503, count=1)
    async with mpt.http.get(mpt.url("/auth/key")) as resp:
        assert resp.status == 503 and (await resp.json())["code"] == 503
    await mpt.key()  # the failure was used up

    async with mpt.http.post(f"{mpt.server.url}/_sandbox/hang?enabled=1") as resp:
        assert (await resp.json()) == {"hang": True}
    pending = asyncio.create_task(mpt.key())
    await asyncio.sleep(0.3)
    assert not pending.done()
    token_ok = await mpt.call("GET", "/cises/info", None)  # the API itself never hangs
    assert token_ok[0] == 401
    mpt.api.hang(False)
    await asyncio.wait_for(pending, 5)

    mpt.api.latency = 0.3
    started = time.monotonic()
    await mpt.key()
    assert time.monotonic() - started >= 0.3


async def test_client_certificate_is_reported_when_offered(mpt: Mpt) -> None:
    token = await mpt.login()
    client = mpt.pki.issue_client("tls-client", "TLS Client")
    connector = aiohttp.TCPConnector(ssl=mpt.pki.client_ssl_context(client))
    async with aiohttp.ClientSession(connector=connector) as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(mpt.url("/cises/info"), headers=headers) as resp:
            echo = await resp.json()
    assert echo["client_cert"]["subject"] == client.cert.subject.rfc4514_string()
