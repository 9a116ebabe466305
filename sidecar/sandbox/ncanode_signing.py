"""The signing core of the NCANode emulator: PKCS#12 keys in, CMS SignedData out.

NCANode signs with Kazakh GOST keys through Kalkan; the sandbox signs RSA and EC keys with
``cryptography`` instead, but as NCANode does: DER SignedData over the exact bytes given,
signer certificates included, the digest taken from each certificate's signature
algorithm. Key problems carry Kalkan's and NCANode's wording, which clients see.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7, pkcs12

__all__ = ["KeyProblem", "KeySpec", "java_b64decode", "sign_cms"]

_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_SHA2 = (hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)

# NCANode v3 key messages (kz.ncanode.constants.MessageConstants).
_V3_KEY_MESSAGES = {
    "base64": "Key reading error: Invalid Base64 format. Key must be in valid Base64 format.",
    "format": "Key reading error: Invalid format.",
    "password": "Key reading error: Password incorrect.",
}
# What Kalkan itself says, which v1 and v2 pass through unchanged.
_KALKAN_MESSAGES = {
    "format": "stream does not represent a PKCS12 key store",
    "password": "PKCS12 key store mac invalid - wrong password or corrupted file.",
}


def java_b64decode(text: str) -> bytes:
    """Decode like Java's ``Base64.getDecoder()``: strict alphabet, no whitespace, optional
    padding; errors carry Java's messages, which NCANode passes on to clients."""
    stripped = text.rstrip("=")
    padding = len(text) - len(stripped)
    for char in stripped:
        if char not in _B64_ALPHABET:
            raise ValueError(f"Illegal base64 character {ord(char):x}")
    if padding > 2 or (padding and len(text) % 4):
        raise ValueError("Input byte array has wrong 4-byte ending unit")
    if len(stripped) % 4 == 1:
        raise ValueError("Last unit does not have enough valid bits")
    return base64.b64decode(stripped + "=" * (-len(stripped) % 4))


class KeyProblem(Exception):
    """A signer's PKCS#12 could not be used; ``kind`` picks each API's wording."""

    def __init__(self, index: int, kind: str, detail: str = "") -> None:
        super().__init__(f"signers[{index}]: {kind} {detail}".strip())
        self.index = index
        self.kind = kind  # base64 | format | password | alias | unsupported
        self.detail = detail

    def kalkan_message(self) -> str:
        if self.kind in _KALKAN_MESSAGES:
            return _KALKAN_MESSAGES[self.kind]
        return self.detail

    def v3_message(self) -> str:
        if self.kind in _V3_KEY_MESSAGES:
            text = _V3_KEY_MESSAGES[self.kind]
        elif self.kind == "alias":
            text = f"Key reading error: Key does not have '{self.detail}' alias"
        else:
            text = self.detail
        return f"signers[{self.index}]: {text}"


@dataclass(frozen=True)
class KeySpec:
    """One signer as the request gave it: the base64 PKCS#12, its password and an alias."""

    p12: str
    password: str
    alias: str | None


@dataclass(frozen=True)
class _Signer:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _load_signer(index: int, spec: KeySpec) -> _Signer:
    try:
        raw = java_b64decode(spec.p12)
    except ValueError as exc:
        raise KeyProblem(index, "base64", str(exc)) from None
    try:
        loaded = pkcs12.load_pkcs12(raw, spec.password.encode())
    except ValueError as exc:
        # cryptography says "Could not deserialize" for non-PKCS#12 bytes and "Invalid
        # password" when the MAC does not verify: the two cases Kalkan tells apart.
        kind = "format" if "deserialize" in str(exc) else "password"
        raise KeyProblem(index, kind) from None
    if loaded.key is None or loaded.cert is None:
        raise KeyProblem(index, "format")
    if spec.alias:
        name = (loaded.cert.friendly_name or b"").decode("utf-8", "replace")
        # Java's PKCS12 key store lower-cases aliases, so compare without case.
        if name.lower() != spec.alias.lower():
            raise KeyProblem(index, "alias", spec.alias)
    if not isinstance(loaded.key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        kind_name = type(loaded.key).__name__
        raise KeyProblem(
            index, "unsupported", f"the sandbox signs RSA and EC keys, not {kind_name}"
        )
    return _Signer(key=loaded.key, cert=loaded.cert.certificate)


def _digest_for(cert: x509.Certificate) -> hashes.HashAlgorithm:
    # NCANode picks the digest from the certificate's signature algorithm
    # (Helper.getDigestAlgorithmOidBYSignAlgorithmOid); SHA-256 when that is not SHA-2.
    algorithm = cert.signature_hash_algorithm
    if isinstance(algorithm, _SHA2):
        return type(algorithm)()
    return hashes.SHA256()


def sign_cms(data: bytes, specs: Sequence[KeySpec], *, detached: bool) -> bytes:
    """Load every key and make the CMS; CPU-bound, so callers run it in a thread."""
    signers = [_load_signer(i, spec) for i, spec in enumerate(specs)]
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data)
    for signer in signers:
        builder = builder.add_signer(signer.cert, signer.key, _digest_for(signer.cert))
    # Binary keeps the bytes exact (no LF→CRLF); NoCapabilities leaves only the attributes
    # Kalkan adds (contentType, signingTime, messageDigest).
    options = [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCapabilities]
    if detached:
        options.append(pkcs7.PKCS7Options.DetachedSignature)
    return builder.sign(Encoding.DER, options)
