"""What is wrong with a certificate, key or bundle file, said the way a user can act on it.

``sidecar check`` runs these before building the TLS contexts and signers: the builders'
own errors (OpenSSL's "PEM lib", "key values mismatch") say that something failed, these
say which file holds what, and what the fix is. Never quotes a secret or a key.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from pydantic import SecretStr

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_KEY_KINDS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY")


def pem_kinds(path: Path) -> set[str]:
    """The PEM block types in a file (``CERTIFICATE``, ``PRIVATE KEY``...); empty if none."""
    try:
        data = path.read_bytes()
    except OSError:
        return set()
    return {m.decode("ascii") for m in _PEM_BEGIN.findall(data)}


def _has_key(kinds: set[str]) -> bool:
    return any(k in kinds for k in _KEY_KINDS)


def ca_problem(path: Path) -> str | None:
    kinds = pem_kinds(path)
    if "CERTIFICATE" in kinds:
        return None
    if _has_key(kinds):
        return f"{path} holds a private key, not CA certificates: give the PEM certificate(s) " \
            "of the CA that issued the server's certificate"
    return f"{path} is not a PEM CA bundle (no BEGIN CERTIFICATE block)"


def cert_problem(path: Path) -> str | None:
    kinds = pem_kinds(path)
    if "CERTIFICATE" in kinds:
        return None
    if _has_key(kinds):
        return f"{path} holds a private key, not a certificate (cert_file and key_file swapped?)"
    if path.read_bytes()[:1] == b"\x30":
        return f"{path} is binary (DER or PKCS#12), not a PEM certificate: convert it with " \
            "`openssl x509 -inform der -in FILE -out cert.pem`, or give a bundle as p12_file"
    return f"{path} is not a PEM certificate (no BEGIN CERTIFICATE block)"


def key_problem(path: Path, password: SecretStr | None = None) -> str | None:
    kinds = pem_kinds(path)
    if not _has_key(kinds):
        if "CERTIFICATE" in kinds:
            return f"{path} holds a certificate, not a private key " \
                "(cert_file and key_file swapped?)"
        return f"{path} is not a PEM private key (no BEGIN PRIVATE KEY block)"
    secret = password.get_secret_value().encode() if password else None
    try:
        serialization.load_pem_private_key(path.read_bytes(), secret)
    except TypeError:
        if secret is None:
            return f"{path} is an encrypted key: give its password (key_password), or an " \
                "unencrypted key"
        return f"{path} is not encrypted, but a key_password is given: remove it"
    except ValueError:
        if secret is not None:
            return f"{path}: cannot decrypt the key (wrong key_password?)"
        return f"{path}: not a usable private key"
    return None


def pair_problem(cert: Path, key: Path, password: SecretStr | None = None) -> str | None:
    """A certificate whose public key is not the key's: both files load, but do not match."""
    secret = password.get_secret_value().encode() if password else None
    try:
        certs = x509.load_pem_x509_certificates(cert.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), secret)
    except (ValueError, TypeError):
        return None  # said by cert_problem / key_problem
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    public = private.public_key().public_bytes(der, spki)
    if any(c.public_key().public_bytes(der, spki) == public for c in certs):
        return None
    return f"the certificate in {cert} does not match the key in {key} (a certificate of " \
        "another key pair: give the certificate issued for this key)"


def p12_problem(path: Path, password: SecretStr | None, password_field: str) -> str | None:
    data = path.read_bytes()
    if _PEM_BEGIN.search(data):
        return f"{path} is PEM text, not a PKCS#12 bundle: give PEM files as cert_file and " \
            "key_file, or make a bundle with `openssl pkcs12 -export`"
    secret = password.get_secret_value().encode() if password else None
    try:
        key, cert, _ = pkcs12.load_key_and_certificates(data, secret)
    except ValueError:
        if secret is None:
            return f"{path} cannot be opened without a password: set {password_field} " \
                f"(or {password_field}_file)"
        return f"{path} cannot be opened: wrong {password_field}, or not a PKCS#12 file"
    if key is None or cert is None:
        return f"{path} holds no private key and certificate (a CA bundle?)"
    return None
