"""The built-in signer: ``cryptography``'s PKCS7SignatureBuilder, RSA or EC keys.

Always with the ``Binary`` option: without it line endings in the data would be rewritten to
CRLF, and the signature would not match the exact bytes the IdP checks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from sidecar.config.auth import Pkcs7Signing
from sidecar.config.errors import SetupError
from sidecar.pkcs12 import open_bundle
from sidecar.signing.base import SigningError

_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SignerSetupError(SetupError):
    """A key or certificate the signer cannot use; the message names the file."""


class Pkcs7Signer:
    def __init__(self, cfg: Pkcs7Signing, detached: bool) -> None:
        self.detached = detached
        self._key, self._cert, self._chain = _load(cfg)
        self._digest = _DIGESTS[cfg.digest]()
        options = [pkcs7.PKCS7Options.Binary]
        if detached:
            options.append(pkcs7.PKCS7Options.DetachedSignature)
        if not cfg.signed_attributes:
            options.append(pkcs7.PKCS7Options.NoAttributes)
        if not cfg.include_certificate:
            options.append(pkcs7.PKCS7Options.NoCerts)
        self._options = options
        self.subject = self._cert.subject.rfc4514_string()

    def sign_now(self, data: bytes) -> bytes:
        builder = pkcs7.PKCS7SignatureBuilder().set_data(data)
        builder = builder.add_signer(self._cert, self._key, self._digest)
        for extra in self._chain:
            builder = builder.add_certificate(extra)
        try:
            return builder.sign(serialization.Encoding.DER, self._options)
        except (ValueError, TypeError) as exc:
            raise SigningError(f"pkcs7 signing failed: {exc}") from None

    async def sign(self, data: bytes) -> bytes:
        # RSA signing takes about a millisecond: off the loop, so the proxy never stalls.
        return await asyncio.to_thread(self.sign_now, data)

    async def close(self) -> None:
        return None


def _load(cfg: Pkcs7Signing) -> tuple[SigningKey, x509.Certificate, list[x509.Certificate]]:
    if cfg.p12_file is not None:
        key, cert, chain = open_bundle(cfg.p12_file, cfg.p12_password, "signer.p12_file")
        return _usable(key, cfg.p12_file), cert, chain
    assert cfg.cert_file is not None and cfg.key_file is not None
    try:
        certs = x509.load_pem_x509_certificates(cfg.cert_file.read_bytes())
    except ValueError:
        raise SignerSetupError(f"signer.cert_file {cfg.cert_file}: not a PEM certificate") from None
    password = cfg.key_password.get_secret_value().encode() if cfg.key_password else None
    try:
        key = serialization.load_pem_private_key(cfg.key_file.read_bytes(), password)
    except (ValueError, TypeError):
        raise SignerSetupError(
            f"signer.key_file {cfg.key_file}: cannot load (not a PEM key, or wrong key_password)"
        ) from None
    usable = _usable(key, cfg.key_file)
    mine = [c for c in certs if _same_key(c, usable)]
    if not mine:
        raise SignerSetupError(
            f"signer.cert_file {cfg.cert_file} does not hold the certificate of "
            f"signer.key_file {cfg.key_file}"
        )
    return usable, mine[0], [c for c in certs if c is not mine[0]]


def _same_key(cert: x509.Certificate, key: SigningKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _usable(key: object, path: Path) -> SigningKey:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key
    raise SignerSetupError(
        f"{path}: the built-in pkcs7 signer takes RSA or EC keys; for GOST use the command "
        "signer (OpenSSL with the GOST engine, CryptoPro) or ncanode"
    )
