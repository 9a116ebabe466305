"""Leaf certificates for intercepted hosts: EC P-256, the SAN exactly the host the app asked
for (DNS name or IP), valid a few days, minted on first use, cached per host and renewed
ahead of expiry. Each becomes a server-side TLS context that offers only HTTP/1.1."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.interception.ca import CertificateAuthority

LEAF_VALIDITY = datetime.timedelta(days=4)
RENEW_BEFORE = datetime.timedelta(days=1)  # a fresh leaf is minted when less than this is left
_MAX_HOSTS = 1024  # apps call a handful of hosts; the cache only ever holds matched ones


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def mint_leaf(
    ca: CertificateAuthority, host: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # small clock skews
        .not_valid_after(now + LEAF_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_san(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


def server_context(
    ca: CertificateAuthority, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # the pipeline speaks HTTP/1.1 only
    pem = cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # ssl loads a chain from files only: a private temporary directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="sidecar-leaf-") as tmp:
        chain, key_path = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        chain.write_bytes(pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        ctx.load_cert_chain(chain, key_path)
    return ctx


class LeafCache:
    """One TLS context per intercepted host, renewed when its leaf nears expiry."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self._contexts: dict[str, tuple[ssl.SSLContext, datetime.datetime]] = {}

    def context_for(self, host: str) -> ssl.SSLContext:
        host = host.rstrip(".").lower()
        now = datetime.datetime.now(datetime.UTC)
        found = self._contexts.get(host)
        if found is not None and found[1] - now > RENEW_BEFORE:
            return found[0]
        cert, key = mint_leaf(self.ca, host)
        ctx = server_context(self.ca, cert, key)
        if len(self._contexts) >= _MAX_HOSTS:
            self._contexts.clear()
        self._contexts[host] = (ctx, cert.not_valid_after_utc)
        return ctx
