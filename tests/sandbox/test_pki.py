"""The sandbox CA issues certificates that real TLS stacks and OpenSSL accept."""

from __future__ import annotations

import asyncio
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.sandbox.pki import Pki

OPENSSL = "/usr/bin/openssl"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


async def _tls_roundtrip(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    server_hostname: str = "127.0.0.1",
) -> tuple[bytes, dict | None]:
    """Handshake a real asyncio TLS server and client; return the echo and peer cert."""
    seen: dict[str, dict | None] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["peer"] = writer.get_extra_info("peercert")
        try:
            data = await reader.readline()
            writer.write(b"echo:" + data)
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname
        )
        try:
            writer.write(b"hello\n")
            await writer.drain()
            reply = await reader.readline()
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
    return reply, seen.get("peer")


async def _refused(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bool:
    # With TLS 1.3 the client's handshake completes before the server checks the client
    # certificate, so the refusal shows up as an alert or an empty read afterwards.
    try:
        reply, _ = await _tls_roundtrip(server_ctx, client_ctx)
    except (ssl.SSLError, ConnectionError):
        return True
    return reply == b""


def test_ca_files_and_extensions(pki: Pki) -> None:
    assert pki.ca_file == pki.directory / "ca.crt"
    ca = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "authsidecar sandbox CA"
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    assert stat.S_IMODE(pki.ca_key_file.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(pki.ca_key_file.read_bytes(), password=None)
    assert key.public_key() == ca.public_key()


def test_server_cert_contents(pki: Pki) -> None:
    issued = pki.issue_server("api", ["127.0.0.1", "localhost", "api.sandbox.test"])
    assert issued.cert_file == pki.directory / "api.crt"
    assert issued.key_file == pki.directory / "api.key"
    assert issued.p12_file == pki.directory / "api.p12"
    cert = issued.cert
    cert.verify_directly_issued_by(pki.ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "api.sandbox.test"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 2048
    assert cert.not_valid_before_utc < cert.not_valid_after_utc
    assert stat.S_IMODE(issued.key_file.stat().st_mode) == 0o600
    pem = issued.key_file.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # unencrypted PKCS#8


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_client_cert_eku_and_cn(pki: Pki, key_type: str) -> None:
    issued = pki.issue_client("sidecar", "trader-01", key_type=key_type)  # type: ignore[arg-type]
    cert = issued.cert
    cert.verify_directly_issued_by(pki.ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "trader-01"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    expected = rsa.RSAPublicKey if key_type == "rsa" else ec.EllipticCurvePublicKey
    assert isinstance(cert.public_key(), expected)
    # The file on disk is the same certificate as the parsed one.
    assert x509.load_pem_x509_certificate(issued.cert_file.read_bytes()) == cert


def test_client_cn_defaults_to_name(pki: Pki) -> None:
    cert = pki.issue_client("robot").cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "robot"


def test_p12_loads_with_its_password_only(pki: Pki) -> None:
    issued = pki.issue_client("sidecar")
    data = issued.p12_file.read_bytes()
    key, cert, extra = pkcs12.load_key_and_certificates(data, issued.p12_password.encode())
    assert cert == issued.cert
    assert key is not None and key.public_key() == issued.cert.public_key()
    assert extra == [pki.ca_cert]
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(data, b"wrong password")
    assert stat.S_IMODE(issued.p12_file.stat().st_mode) == 0o600


def test_openssl_cli_parses_and_verifies(pki: Pki) -> None:
    server = pki.issue_server("idp")
    client = pki.issue_client("sidecar")
    out = subprocess.run(
        [OPENSSL, "x509", "-noout", "-subject", "-in", str(client.cert_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CN = sidecar" in out or "CN=sidecar" in out
    for cert_file, purpose in ((server.cert_file, "sslserver"), (client.cert_file, "sslclient")):
        result = subprocess.run(
            [OPENSSL, "verify", "-purpose", purpose, "-CAfile", str(pki.ca_file), str(cert_file)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(": OK")
    # A server certificate is not good for client authentication.
    ca_arg = str(pki.ca_file)
    wrong = subprocess.run(
        [OPENSSL, "verify", "-purpose", "sslclient", "-CAfile", ca_arg, str(server.cert_file)],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode != 0


async def test_server_cert_verifies_in_real_handshake(pki: Pki) -> None:
    server = pki.issue_server("api")
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    reply, peer = await _tls_roundtrip(pki.server_ssl_context(server), client_ctx)
    assert reply == b"echo:hello\n"
    assert peer is None  # no client certificate was requested


async def test_handshake_fails_for_other_ca_or_wrong_host(pki: Pki, tmp_path: Path) -> None:
    server_ctx = pki.server_ssl_context(pki.issue_server("api"))
    other = Pki(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _tls_roundtrip(server_ctx, other.client_ssl_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        await _tls_roundtrip(server_ctx, pki.client_ssl_context(), server_hostname="example.com")


async def test_mutual_tls_requires_a_cert_from_this_ca(pki: Pki, tmp_path: Path) -> None:
    server_ctx = pki.server_ssl_context(pki.issue_server("api"), require_client_cert=True)
    assert server_ctx.verify_mode == ssl.CERT_REQUIRED
    assert server_ctx.minimum_version >= ssl.TLSVersion.TLSv1_2

    client = pki.issue_client("sidecar", "sidecar")
    reply, peer = await _tls_roundtrip(server_ctx, pki.client_ssl_context(client))
    assert reply == b"echo:hello\n"
    assert peer is not None
    assert ((("organizationName", "authsidecar sandbox"),), (("commonName", "sidecar"),)) == (
        peer["subject"]
    )

    # Without a certificate, or with one from another CA, the server refuses us.
    assert await _refused(server_ctx, pki.client_ssl_context())
    foreign = Pki(tmp_path / "other").issue_client("intruder")
    ctx = pki.client_ssl_context()
    ctx.load_cert_chain(foreign.cert_file, foreign.key_file)
    assert await _refused(server_ctx, ctx)


def test_invalid_names_are_rejected(pki: Pki) -> None:
    for bad in ("", "../evil", "ca"):
        with pytest.raises(ValueError):
            pki.issue_client(bad)
    with pytest.raises(ValueError):
        pki.issue_server("api", hosts=())
