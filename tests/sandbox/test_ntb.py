"""The NTB-like API behind the full sandbox stack (IdP + API over TLS, mutual TLS)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from sidecar.sandbox.ntb import DOWNLOAD_BLOCK, download_bytes, download_sha256
from sidecar.sandbox.servers import SandboxStack, start_sandbox, stop_sandbox

MIB = 1024 * 1024
LOGIN = {
    "grant_type": "password",
    "username": "trader",
    "password": "trader-password",
    "client_id": "LK_NTB_PUBLIC",
    "scope": "openid email profile",
}


@pytest.fixture
async def stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SandboxStack]:
    mtls = request.node.get_closest_marker("ntb_mtls") is not None
    stack = await start_sandbox(tmp_path / "sandbox", require_client_cert=mtls)
    yield stack
    await stop_sandbox(stack)


@pytest.fixture
async def http(stack: SandboxStack) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=stack.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def login(http: aiohttp.ClientSession, stack: SandboxStack) -> str:
    async with http.post(stack.token_url, data=LOGIN) as resp:
        assert resp.status == 200
        return (await resp.json())["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_stack_urls(stack: SandboxStack) -> None:
    assert stack.token_url == (
        f"https://127.0.0.1:{stack.idp_server.port}/auth/realms/SSO/protocol/openid-connect/token"
    )
    assert stack.api_url == f"https://127.0.0.1:{stack.api_server.port}"
    cn = stack.client_cert.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn[0].value == "sidecar"
    assert stack.client_cert.cert_file.exists() and stack.pki.ca_file.exists()


async def test_rejects_missing_bad_and_dead_tokens(
    stack: SandboxStack, http: aiohttp.ClientSession
) -> None:
    url = f"{stack.api_url}/ntb/contracts"
    token = await login(http, stack)
    cases: list[dict[str, str]] = [
        {},
        {"Authorization": "Basic dXNlcjpwdw=="},
        bearer("bogus"),
        bearer(token[:-2] + ("AA" if not token.endswith("AA") else "BB")),
    ]
    for headers in cases:
        # A 1 MiB body is read and discarded, so the client sees the 401, not a reset.
        async with http.post(url, data=os.urandom(MIB), headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
            assert await resp.json() == {"error": "invalid_token"}
    async with http.get(url, headers=bearer(token)) as resp:
        assert resp.status == 200
    stack.idp.revoke_sessions()
    async with http.get(url, headers=bearer(token)) as resp:
        assert resp.status == 401
    assert stack.ntb.stats()["rejected"] == 5
    assert stack.ntb.stats()["requests"] == 1


@pytest.mark.ntb_mtls
async def test_reports_the_request(stack: SandboxStack, http: aiohttp.ClientSession) -> None:
    token = await login(http, stack)
    body = b'{"contract": 42}'
    headers = [
        ("Authorization", f"Bearer {token}"),
        ("X-Multi", "one"),
        ("X-Multi", "two"),
        ("Content-Type", "application/json"),
    ]
    url = f"{stack.api_url}/ntb/api/v1/contracts?b=2&a=%20x"
    async with http.put(url, data=body, headers=CIMultiDict(headers)) as resp:
        assert resp.status == 200
        report = await resp.json()
    assert report["method"] == "PUT"
    assert report["path"] == "/ntb/api/v1/contracts"
    assert report["query"] == "b=2&a=%20x"
    assert report["headers"]["x-multi"] == ["one", "two"]
    assert report["headers"]["content-type"] == "application/json"
    assert report["headers"]["authorization"] == f"Bearer {token}"
    assert report["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert report["body_length"] == len(body)
    claims = stack.idp.introspect(token)
    assert claims is not None and report["token_sub"] == claims["sub"]
    cert = stack.client_cert.cert
    assert report["client_cert"]["subject"] == cert.subject.rfc4514_string()
    assert report["client_cert"]["subject"] == "CN=sidecar,O=authsidecar sandbox"
    assert report["client_cert"]["serial"] == cert.serial_number
    assert report["request_no"] == 1

    async with http.get(f"{stack.api_url}/ntb", headers=bearer(token)) as resp:
        assert (await resp.json())["request_no"] == 2
    assert stack.ntb.requests == 2
    assert stack.ntb.seen_tokens == {token}
    assert stack.ntb.last_request is not None and stack.ntb.last_request["path"] == "/ntb"
    stack.ntb.reset_stats()
    assert stack.ntb.stats() == {
        "requests": 0,
        "rejected": 0,
        "seen_tokens": 0,
        "last_request": None,
    }

    async with http.get(f"{stack.api_url}/other", headers=bearer(token)) as resp:
        assert resp.status == 404


async def test_streamed_upload_is_hashed(stack: SandboxStack, http: aiohttp.ClientSession) -> None:
    token = await login(http, stack)
    data = os.urandom(5 * MIB)
    # An async generator makes aiohttp send it chunked, with no Content-Length.
    async with http.post(
        f"{stack.api_url}/ntb/upload", data=chunks(data), headers=bearer(token)
    ) as resp:
        assert resp.status == 200
        report = await resp.json()
    assert "content-length" not in report["headers"]
    assert report["headers"]["transfer-encoding"] == "chunked"
    assert report["body_length"] == len(data)
    assert report["body_sha256"] == hashlib.sha256(data).hexdigest()


async def test_echo_returns_identical_bytes(
    stack: SandboxStack, http: aiohttp.ClientSession
) -> None:
    token = await login(http, stack)
    data = os.urandom(5 * MIB)
    url = f"{stack.api_url}/ntb/echo?echo=1"
    async with http.post(url, data=data, headers=bearer(token)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Length"] == str(len(data))
        digest = hashlib.sha256()
        length = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            length += len(chunk)
    assert length == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()

    async with http.post(url, data=chunks(data[: MIB + 7]), headers=bearer(token)) as resp:
        assert resp.status == 200
        assert "Content-Length" not in resp.headers
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.read() == data[: MIB + 7]
    assert stack.ntb.last_request is not None
    assert stack.ntb.last_request["body_length"] == MIB + 7


async def test_download(stack: SandboxStack, http: aiohttp.ClientSession) -> None:
    token = await login(http, stack)
    size = 3 * DOWNLOAD_BLOCK + 123
    url = f"{stack.api_url}/ntb/download"
    async with http.get(url, params={"size": size, "seed": "abc"}, headers=bearer(token)) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(size)
        body = await r.read()
        header_sha = r.headers["X-Body-Sha256"]
    assert len(body) == size
    assert header_sha == hashlib.sha256(body).hexdigest() == download_sha256(size, "abc")
    assert body == b"".join(download_bytes(size, "abc"))

    params = {"size": size, "seed": "abc", "chunked": "1"}
    async with http.get(url, params=params, headers=bearer(token)) as r:
        assert "Content-Length" not in r.headers
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert await r.read() == body  # deterministic for the same seed
    async with http.get(url, params={"size": size, "seed": "xyz"}, headers=bearer(token)) as r:
        other = await r.read()
    assert len(other) == size and other != body
    async with http.get(url, params={"size": "-1"}, headers=bearer(token)) as r:
        assert r.status == 400
    async with http.get(url, params={"size": "0"}, headers=bearer(token)) as r:
        assert await r.read() == b""
        assert r.headers["X-Body-Sha256"] == hashlib.sha256(b"").hexdigest()


def test_download_bytes_are_prefix_stable() -> None:
    big = b"".join(download_bytes(DOWNLOAD_BLOCK + 10, "s"))
    small = b"".join(download_bytes(100, "s"))
    assert big[:100] == small
    assert [len(c) for c in download_bytes(DOWNLOAD_BLOCK + 10, "s")] == [DOWNLOAD_BLOCK, 10]
    with pytest.raises(ValueError):
        list(download_bytes(-1))


@pytest.mark.ntb_mtls
async def test_client_certificate_is_required_as_an_option(
    stack: SandboxStack, http: aiohttp.ClientSession
) -> None:
    token = await login(http, stack)
    no_cert = aiohttp.TCPConnector(ssl=stack.client_ssl_context(with_client_cert=False))
    async with aiohttp.ClientSession(connector=no_cert) as anonymous:
        with pytest.raises(aiohttp.ClientError):
            async with anonymous.get(f"{stack.api_url}/ntb", headers=bearer(token)) as resp:
                await resp.read()
        # The IdP itself does not ask for a client certificate.
        async with anonymous.post(stack.token_url, data=LOGIN) as resp:
            assert resp.status == 200
    assert stack.ntb.requests == 0


async def test_by_default_no_client_certificate_is_asked(tmp_path: Path) -> None:
    # MOEX publishes no client certificate for NTB: the sandbox must not teach one.
    stack = await start_sandbox(tmp_path, access_ttl=1)
    try:
        connector = aiohttp.TCPConnector(ssl=stack.client_ssl_context(with_client_cert=False))
        async with aiohttp.ClientSession(connector=connector) as http:
            token = await login(http, stack)
            async with http.get(f"{stack.api_url}/ntb/x", headers=bearer(token)) as resp:
                assert resp.status == 200
                assert (await resp.json())["client_cert"] is None
            await asyncio.sleep(1.1)  # access_ttl reached the IdP
            async with http.get(f"{stack.api_url}/ntb/x", headers=bearer(token)) as resp:
                assert resp.status == 401
    finally:
        await stop_sandbox(stack)


async def test_api_server_restarts_on_same_port(
    stack: SandboxStack, http: aiohttp.ClientSession
) -> None:
    token = await login(http, stack)
    port = stack.api_server.port
    await stack.api_server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{stack.api_url}/ntb", headers=bearer(token)) as resp:
            await resp.read()
    await stack.api_server.start()
    assert stack.api_server.port == port
    async with http.get(f"{stack.api_url}/ntb", headers=bearer(token)) as resp:
        assert resp.status == 200
