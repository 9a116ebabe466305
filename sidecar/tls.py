"""Client-side TLS: one ``ssl.SSLContext`` per upstream (and per IdP when ``auth.tls`` is set).

Verification is on by default and never falls back silently; a client certificate comes from
PEM files or a PKCS#12 bundle.
"""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sidecar.certinfo import certificate_info
from sidecar.config.errors import SetupError
from sidecar.config.sections import Tls


class TlsSetupError(SetupError):
    """A certificate, key or CA that cannot be used; the message names the file."""


CERT_WARNING_DAYS = 14.0  # KISC's temporary certificates live 14 days


@dataclass(frozen=True)
class ClientIdentity:
    subject: str
    not_after: datetime

    def days_left(self, now: datetime | None = None) -> float:
        now = now or datetime.now(UTC)
        return (self.not_after - now).total_seconds() / 86400

    def status(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left(), 2),
        }


def client_context(tls: Tls) -> ssl.SSLContext:
    if tls.ca_file is None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        # ca_file replaces the system store (as curl's --cacert): otherwise any public CA
        # could vouch for a private API's host name. system_ca adds the store back.
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise TlsSetupError(f"ca_file {tls.ca_file}: not a usable CA bundle ({exc})") from None
        if tls.system_ca:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (ssl.SSLError, OSError) as exc:
            raise TlsSetupError(
                f"cert_file {tls.cert_file} / key_file {tls.key_file}: cannot load ({exc})"
            ) from None
    elif tls.p12_file is not None:
        _load_p12(ctx, tls)
    return ctx


def _load_p12(ctx: ssl.SSLContext, tls: Tls) -> None:
    # cryptography only for a bundle: PEM files alone never load it (about 10 MiB).
    from cryptography.hazmat.primitives import serialization

    from sidecar.pkcs12 import open_bundle

    assert tls.p12_file is not None
    key, cert, chain = open_bundle(tls.p12_file, tls.p12_password, "p12_file")
    # ssl can only load a chain from a file. The key goes there encrypted with a passphrase
    # that lives in memory for this call only: a clear key never touches the disk, even
    # for a moment (a crash, a snapshot of /tmp, another process of the same user).
    passphrase = secrets.token_urlsafe(32).encode("ascii")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    ) + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *chain])
    fd, name = tempfile.mkstemp(prefix="sidecar-", suffix=".pem")  # 0600
    try:
        os.write(fd, pem)
        os.close(fd)
        ctx.load_cert_chain(name, password=passphrase)
    finally:
        Path(name).unlink(missing_ok=True)


def client_identity(tls: Tls) -> ClientIdentity | None:
    """Subject and expiry of the configured client certificate, for status and warnings."""
    if tls.cert_file is not None:
        return ClientIdentity(*certificate_info(tls.cert_file.read_bytes()))
    if tls.p12_file is not None:
        from sidecar.pkcs12 import open_bundle

        _, cert, _ = open_bundle(tls.p12_file, tls.p12_password, "p12_file")
        return ClientIdentity(cert.subject.rfc4514_string(), cert.not_valid_after_utc)
    return None
