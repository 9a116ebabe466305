"""A throw-away certificate authority for the sandbox.

Everything is generated in-process with ``cryptography`` and written as plain files
(PEM certificate, unencrypted PKCS#8 key, password-protected PKCS#12) so the sidecar
can be pointed at them exactly as it would be at real credentials.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["IssuedCert", "Pki"]

# Short but sane: back-dated a little to tolerate clock skew between processes.
_BACKDATE = dt.timedelta(minutes=5)
_LEAF_VALIDITY = dt.timedelta(days=30)
_CA_VALIDITY = dt.timedelta(days=31)
_RSA_BITS = 2048
_ORG = "authsidecar sandbox"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate and where its files live."""

    cert_file: Path
    key_file: Path
    p12_file: Path
    p12_password: str
    cert: x509.Certificate


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file that is never readable by other users, even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode is ignored when the file already existed


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class Pki:
    """A self-signed CA in ``directory`` that issues server and client certificates."""

    def __init__(self, directory: Path, *, name: str = "authsidecar sandbox CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        # EC keeps CA generation instant; leaves are RSA like the real MOEX/KISC ones.
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key())
        self.ca_cert: x509.Certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_file = self.directory / "ca.crt"
        self.ca_key_file = self.directory / "ca.key"
        self.ca_file.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        _write_private(self.ca_key_file, _key_pem(self._ca_key))

    # -- issuing ---------------------------------------------------------------------------

    def issue_server(
        self, name: str, hosts: Sequence[str] = ("127.0.0.1", "localhost")
    ) -> IssuedCert:
        """Issue a TLS server certificate (RSA 2048, EKU serverAuth) valid for ``hosts``."""
        if not hosts:
            raise ValueError("a server certificate needs at least one host")
        key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
        san = x509.SubjectAlternativeName([_san_entry(h) for h in hosts])
        return self._issue(
            name,
            common_name=name,
            key=key,
            eku=ExtendedKeyUsageOID.SERVER_AUTH,
            extra=[san],
        )

    def issue_client(
        self,
        name: str,
        common_name: str | None = None,
        key_type: Literal["rsa", "ec"] = "rsa",
        *,
        valid_days: float = _LEAF_VALIDITY.days,
    ) -> IssuedCert:
        """Issue a TLS client certificate (EKU clientAuth) with CN ``common_name or name``."""
        key: PrivateKey
        if key_type == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
        elif key_type == "ec":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unsupported key_type {key_type!r}")
        return self._issue(
            name,
            common_name=common_name or name,
            key=key,
            eku=ExtendedKeyUsageOID.CLIENT_AUTH,
            extra=[],
            validity=dt.timedelta(days=valid_days),
        )

    def _issue(
        self,
        name: str,
        *,
        common_name: str,
        key: PrivateKey,
        eku: x509.ObjectIdentifier,
        extra: list[x509.ExtensionType],
        validity: dt.timedelta = _LEAF_VALIDITY,
    ) -> IssuedCert:
        if not name or "/" in name or name.startswith(".") or name == "ca":
            raise ValueError(f"invalid certificate name {name!r}")
        now = dt.datetime.now(dt.UTC)
        is_rsa = isinstance(key, rsa.RSAPrivateKey)
        ca_ski = self.ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # RSA key exchange needs keyEncipherment; EC keys never encipher.
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        for ext in extra:
            builder = builder.add_extension(ext, critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())

        cert_file = self.directory / f"{name}.crt"
        key_file = self.directory / f"{name}.key"
        p12_file = self.directory / f"{name}.p12"
        password = secrets.token_urlsafe(18)
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_file, _key_pem(key))
        _write_private(
            p12_file,
            pkcs12.serialize_key_and_certificates(
                name.encode(),
                key,
                cert,
                [self.ca_cert],
                serialization.BestAvailableEncryption(password.encode()),
            ),
        )
        return IssuedCert(
            cert_file=cert_file,
            key_file=key_file,
            p12_file=p12_file,
            p12_password=password,
            cert=cert,
        )

    # -- TLS contexts ----------------------------------------------------------------------

    def server_ssl_context(
        self, cert: IssuedCert, *, require_client_cert: bool = False
    ) -> ssl.SSLContext:
        """A server context presenting ``cert``; optionally demanding a client cert from us."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert.cert_file, cert.key_file)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=self.ca_file)
        return ctx

    def client_ssl_context(self, cert: IssuedCert | None = None) -> ssl.SSLContext:
        """A client context trusting this CA only, optionally presenting ``cert``."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert is not None:
            ctx.load_cert_chain(cert.cert_file, cert.key_file)
        return ctx
