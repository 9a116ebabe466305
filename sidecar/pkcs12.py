"""Opening a PKCS#12 bundle (client certificates, signing keys) with a clear error."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from pydantic import SecretStr

from sidecar.config.errors import SetupError


def open_bundle(
    path: Path, password: SecretStr | None, field: str
) -> tuple[PrivateKeyTypes, x509.Certificate, list[x509.Certificate]]:
    """Key, certificate and chain; ``field`` names the config field in the error."""
    secret = password.get_secret_value().encode() if password else None
    try:
        key, cert, chain = pkcs12.load_key_and_certificates(path.read_bytes(), secret)
    except ValueError:
        raise SetupError(
            f"{field} {path}: cannot open (wrong password or not PKCS#12)"
        ) from None
    if key is None or cert is None:
        raise SetupError(f"{field} {path}: holds no private key and certificate")
    return key, cert, list(chain)
