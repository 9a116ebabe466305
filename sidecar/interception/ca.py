"""The interception CA: loaded from files (a Kubernetes Secret), or generated once into a
state directory and reused on every start after."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.config.errors import SetupError

CERT_NAME = "tls.crt"  # the names of a kubernetes.io/tls Secret's keys
KEY_NAME = "tls.key"
_CA_YEARS = 10


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def generate_ca(common_name: str = "authsidecar interception CA") -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365 * _CA_YEARS))
        # pathlen 0: this CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def write_ca(ca: CertificateAuthority, directory: Path) -> tuple[Path, Path]:
    """``tls.crt`` and ``tls.key`` (0600, created with that mode: never readable by others)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    key_tmp = directory / (KEY_NAME + ".tmp")
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(ca.key_pem())
    cert_tmp = directory / (CERT_NAME + ".tmp")
    cert_tmp.write_bytes(ca.cert_pem())
    # Key first, then the certificate: a certificate on disk always has its key beside it.
    os.replace(key_tmp, key_path)
    os.replace(cert_tmp, cert_path)
    return cert_path, key_path


def read_ca(cert_file: Path, key_file: Path) -> CertificateAuthority:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SetupError(
            f"interception CA {cert_file} / {key_file}: cannot read it ({exc}); give a PEM "
            "certificate and an unencrypted PEM key, e.g. from `sidecar ca init --out DIR`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | _rsa_type()):
        raise SetupError(f"interception CA key {key_file}: use an EC or RSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise SetupError(
            f"interception CA: {key_file} is not the key of {cert_file}; give the pair "
            "from the same Secret"
        )
    return CertificateAuthority(cert, key)  # type: ignore[arg-type]


def _rsa_type() -> type:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPrivateKey


def load_or_create_ca(
    cert_file: Path | None, key_file: Path | None, state_dir: Path
) -> CertificateAuthority:
    """The configured CA, else the one in ``state_dir``, else a new one written there."""
    if cert_file is not None and key_file is not None:
        return read_ca(cert_file, key_file)
    cert_path, key_path = state_dir / CERT_NAME, state_dir / KEY_NAME
    if cert_path.exists() and key_path.exists():
        return read_ca(cert_path, key_path)
    ca = generate_ca()
    try:
        write_ca(ca, state_dir)
    except OSError as exc:
        raise SetupError(
            f"interception.state_dir {state_dir}: cannot write the generated CA there "
            f"({exc.strerror or exc}); mount a writable volume there, or give "
            "interception.ca_cert_file and ca_key_file (e.g. a Secret from `sidecar ca init`)"
        ) from None
    return ca


def check_writable(state_dir: Path) -> None:
    """Interception on and no CA files given: the state directory must take the CA."""
    probe = state_dir / ".write-test"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SetupError(
            f"interception.state_dir {state_dir} is not writable ({exc.strerror or exc}); "
            "mount a writable volume there, or give interception.ca_cert_file and ca_key_file"
        ) from None
