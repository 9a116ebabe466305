"""Client-side TLS (``sidecar.tls``): contexts from PEM files and PKCS#12 bundles that really
handshake with an mTLS server, verification on unless turned off, errors that name the file,
and the client certificate's subject and days left."""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from sidecar.config.errors import SetupError
from sidecar.config.models import Tls
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.tls import ClientIdentity, TlsSetupError, client_context, client_identity


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def client(pki: Pki) -> IssuedCert:
    return pki.issue_client("app", "app.example", valid_days=10)


class MtlsServer:
    """Requires a client certificate from the sandbox CA; records the subject it saw."""

    def __init__(self) -> None:
        self.port = 0
        self.subjects: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        self.subjects.append(dict(item[0] for item in peer.get("subject", ())).get("commonName"))
        writer.write(b"ok")
        await writer.drain()
        writer.close()


async def _serve(server_pki: Pki, hosts: list[str]) -> AsyncIterator[MtlsServer]:
    cert = server_pki.issue_server("server", hosts)
    ctx = server_pki.server_ssl_context(cert, require_client_cert=True)
    mtls = MtlsServer()
    server = await asyncio.start_server(mtls.handle, "127.0.0.1", 0, ssl=ctx)
    mtls.port = server.sockets[0].getsockname()[1]
    try:
        yield mtls
    finally:
        server.close()


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[MtlsServer]:
    async for mtls in _serve(pki, ["127.0.0.1", "localhost"]):
        yield mtls


async def _handshake(ctx: ssl.SSLContext, port: int, hostname: str = "localhost") -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=hostname), 5)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_a_pem_identity_is_presented_and_the_server_verified(
    pki: Pki, client: IssuedCert, server: MtlsServer
) -> None:
    ctx = client_context(Tls(ca_file=pki.ca_file, cert_file=client.cert_file,
                             key_file=client.key_file))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert await _handshake(ctx, server.port) == b"ok"
    assert server.subjects == ["app.example"]


async def test_a_pkcs12_identity_is_presented_and_its_file_not_left_behind(
    pki: Pki, client: IssuedCert, server: MtlsServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ctx = client_context(Tls(ca_file=pki.ca_file, p12_file=client.p12_file,
                             p12_password=client.p12_password))
    assert os.listdir(tmp_path) == []  # the key was on disk only while being loaded
    assert await _handshake(ctx, server.port) == b"ok"
    assert server.subjects == ["app.example"]


async def test_a_pkcs12_bundle_without_password_made_elsewhere_works(
    pki: Pki, client: IssuedCert, server: MtlsServer, tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(client.key_file.read_bytes(), None)
    bundle = tmp_path / "plain.p12"
    bundle.write_bytes(pkcs12.serialize_key_and_certificates(
        b"plain", key, client.cert, None, serialization.NoEncryption()))  # type: ignore[arg-type]
    ctx = client_context(Tls(ca_file=pki.ca_file, p12_file=bundle))
    assert await _handshake(ctx, server.port) == b"ok"
    assert client_identity(Tls(p12_file=bundle)) == ClientIdentity(
        client.cert.subject.rfc4514_string(), client.cert.not_valid_after_utc)


def test_a_wrong_pkcs12_password_names_the_file_not_the_password(client: IssuedCert) -> None:
    with pytest.raises(SetupError) as caught:
        client_context(Tls(p12_file=client.p12_file, p12_password="not-the-password-7c1"))
    message = str(caught.value)
    assert str(client.p12_file) in message and "p12_file" in message
    assert "not-the-password-7c1" not in message


async def test_a_server_from_another_ca_is_refused_unless_verify_is_off(
    pki: Pki, client: IssuedCert, tmp_path: Path
) -> None:
    stranger = Pki(tmp_path / "stranger", name="someone else's CA")
    identity = {"cert_file": client.cert_file, "key_file": client.key_file}
    async for server in _serve(stranger, ["127.0.0.1"]):
        # The stranger's server asks for a client cert from its own CA: present one of its.
        mine = stranger.issue_client("mine")
        with pytest.raises(ssl.SSLCertVerificationError):
            await _handshake(client_context(Tls(ca_file=pki.ca_file, **identity)), server.port)
        unverified = client_context(Tls(ca_file=pki.ca_file, cert_file=mine.cert_file,
                                        key_file=mine.key_file, verify=False))
        assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname
        assert await _handshake(unverified, server.port) == b"ok"


async def test_a_name_the_certificate_does_not_carry_is_refused_unless_verify_is_off(
    pki: Pki, client: IssuedCert, server: MtlsServer
) -> None:
    identity = {"ca_file": pki.ca_file, "cert_file": client.cert_file,
                "key_file": client.key_file}
    with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|doesn't match"):
        await _handshake(client_context(Tls(**identity)), server.port, "api.moex.com")
    ctx = client_context(Tls(**identity, verify=False))
    assert await _handshake(ctx, server.port, "api.moex.com") == b"ok"


async def test_without_ca_file_the_system_store_is_used(client: IssuedCert,
                                                        server: MtlsServer) -> None:
    """The sandbox CA is in no system store: verification fails rather than passing open."""
    ctx = client_context(Tls(cert_file=client.cert_file, key_file=client.key_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(ctx, server.port)


def test_a_certificate_and_key_that_do_not_match_is_a_setup_error(pki: Pki) -> None:
    one, other = pki.issue_client("one"), pki.issue_client("other")
    with pytest.raises(TlsSetupError) as caught:
        client_context(Tls(cert_file=one.cert_file, key_file=other.key_file))
    message = str(caught.value)
    assert str(one.cert_file) in message and str(other.key_file) in message
    assert "cannot load" in message


def test_a_ca_file_that_is_no_certificate_is_a_setup_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsSetupError, match=r"ca_file .*ca\.pem: not a usable CA bundle"):
        client_context(Tls(ca_file=bad))


def test_client_identity_gives_subject_and_days_left(pki: Pki, client: IssuedCert) -> None:
    identity = client_identity(Tls(cert_file=client.cert_file, key_file=client.key_file))
    assert identity is not None
    assert identity.subject == client.cert.subject.rfc4514_string()
    assert "CN=app.example" in identity.subject
    assert 9.9 < identity.days_left() <= 10
    assert identity.days_left(identity.not_after - timedelta(days=2.5)) == pytest.approx(2.5)
    assert identity.days_left(identity.not_after + timedelta(days=1)) == pytest.approx(-1)
    status = identity.status()
    assert set(status) == {"subject", "not_after", "days_left"}
    assert datetime.fromisoformat(str(status["not_after"])) == identity.not_after
    assert 9.9 < float(status["days_left"]) <= 10  # type: ignore[arg-type]

    from_p12 = client_identity(Tls(p12_file=client.p12_file, p12_password=client.p12_password))
    assert from_p12 == identity


def test_no_client_certificate_no_identity(pki: Pki) -> None:
    assert client_identity(Tls(ca_file=pki.ca_file)) is None


def test_an_expired_certificate_has_negative_days_left(pki: Pki) -> None:
    """An expired client certificate still has an identity, its days left below zero (what
    the expiry warning and /status then show)."""
    issued = pki.issue_client("old", valid_days=-0.001)  # ended 90 s ago
    identity = client_identity(Tls(cert_file=issued.cert_file, key_file=issued.key_file))
    assert identity is not None and identity.days_left() < 0
    assert identity.not_after < datetime.now(UTC)
