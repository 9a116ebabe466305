"""Client TLS: what a context trusts, and how a PKCS#12 client identity is loaded into it
(never as a clear key in a file)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from sidecar.config.sections import Tls
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import SandboxStack, TlsServer
from sidecar.tls import client_context


def _clear_key_forms(p12_file: Path, password: str) -> list[bytes]:
    """The key as it would look written out unencrypted: PEM (PKCS#8, traditional), DER."""
    key, _, _ = pkcs12.load_key_and_certificates(p12_file.read_bytes(), password.encode())
    assert key is not None
    forms = []
    for encoding, fmt in (
        (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8),
        (serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL),
        (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8),
        (serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL),
    ):
        forms.append(key.private_bytes(encoding, fmt, serialization.NoEncryption()))
    return forms


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_p12_key_is_never_in_a_file_in_clear_and_mtls_works(
    sandbox: SandboxStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = sandbox.pki.issue_client("p12-user", "sidecar")
    # Whatever files ssl is handed, read them as they are at that moment.
    handed: list[bytes] = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, keyfile: str | None = None,
            password: object = None) -> None:
        handed.extend(Path(p).read_bytes() for p in (certfile, keyfile) if p)
        original(self, certfile, keyfile, password)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    ctx = client_context(
        Tls(ca_file=sandbox.pki.ca_file, p12_file=client.p12_file,
            p12_password=client.p12_password)  # type: ignore[arg-type]
    )
    monkeypatch.undo()

    assert handed, "the identity was loaded through a file"
    clear = _clear_key_forms(client.p12_file, client.p12_password)
    for content in handed:
        assert b"BEGIN PRIVATE KEY" not in content and b"BEGIN RSA PRIVATE KEY" not in content
        assert not any(form in content for form in clear)

    # The context still presents the certificate: the sandbox API demands one.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sandbox.api_url}/ntb/x", ssl=ctx) as resp:
            assert resp.status == 401  # past the mTLS handshake; no token, as expected
    async with aiohttp.ClientSession() as http:
        no_cert = client_context(Tls(ca_file=sandbox.pki.ca_file))  # type: ignore[arg-type]
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"{sandbox.api_url}/ntb/x", ssl=no_cert) as resp:
                await resp.read()


# -- trust: ca_file alone, unless system_ca ---------------------------------------------------


@pytest.fixture
async def public_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A server whose certificate chains only to a CA of the "system store" (stood in for by
    SSL_CERT_FILE): as any public CA would be, for a host it should not speak for."""
    public = Pki(tmp_path / "public-ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(public.ca_file))
    (tmp_path / "no-certs").mkdir()
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-certs"))
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="impostor")

    app = web.Application()
    app.router.add_get("/", hello)
    server = TlsServer(app, public.server_ssl_context(public.issue_server("impostor")))
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


async def _reaches(url: str, ctx: ssl.SSLContext) -> bool:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(url, ssl=ctx) as resp:
                return resp.status == 200
        except aiohttp.ClientConnectorCertificateError:
            return False


async def test_ca_file_is_the_only_trust(sandbox: SandboxStack, public_server: str) -> None:
    own_ca = sandbox.pki.ca_file
    assert await _reaches(public_server, client_context(Tls()))  # the stand-in store works
    only_own = client_context(Tls(ca_file=own_ca))  # type: ignore[arg-type]
    assert [c["subject"] for c in only_own.get_ca_certs()] == [
        c["subject"] for c in sandbox.pki.client_ssl_context().get_ca_certs()
    ]
    assert not await _reaches(public_server, only_own)
    # The own CA still works: the sandbox API (mTLS aside, any answer means verified).
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sandbox.api_url}/ntb/x", ssl=client_context(
            Tls(ca_file=own_ca, cert_file=sandbox.client_cert.cert_file,  # type: ignore[arg-type]
                key_file=sandbox.client_cert.key_file))) as resp:  # type: ignore[arg-type]
            assert resp.status == 401
    # system_ca: true adds the system store back, as before.
    both = client_context(Tls(ca_file=own_ca, system_ca=True))  # type: ignore[arg-type]
    assert await _reaches(public_server, both)


def test_system_ca_defaults_to_false() -> None:
    assert Tls().system_ca is False
