"""The ``store`` block: where replicas that share one set of credentials keep the shared
token state and rate limits. ``memory`` (the default) keeps everything in the process."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from sidecar.config.fields import ExistingFile, SecretFiles
from sidecar.config.sections import Tls

KEY_BYTES = 32  # AES-256-GCM


def read_key(path: Path) -> bytes:
    """A store key file: 32 bytes, raw or base64 (``openssl rand -base64 32``)."""
    data = path.read_bytes()
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return decoded
    raise ValueError(
        f"{path} does not hold a {KEY_BYTES}-byte key (raw or base64); make one with "
        f"`openssl rand -base64 {KEY_BYTES} > {path}`"
    )


def _check_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(
            f"expected redis://host:port/db or rediss://host:port/db (got {value!r})"
        )
    if parts.password is not None or parts.username is not None:
        raise ValueError("the URL must not carry a user or password: use username and "
                         "password (or password_file)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the path of the URL is a database number, got {db!r}")
    return value


class Store(SecretFiles):
    type: Literal["memory", "redis"] = "memory"
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    tls: Tls | None = None  # for rediss://
    key_prefix: str = Field("authsidecar", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    encryption_key_file: ExistingFile | None = None
    previous_key_files: list[ExistingFile] = []
    timeout: float = Field(0.2, gt=0, le=5.0, description="seconds one Redis call may take")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    def problem(self) -> str | None:
        """What is missing or wrong for ``type: redis``, as ``store.<field>: <fix>``; checked
        by the whole config so that the message names the field."""
        if self.type == "memory":
            return None
        if self.url is None:
            return ("store.url: type redis needs url (redis://host:6379/0, or "
                             "rediss:// for TLS)")
        if self.encryption_key_file is None:
            return (
                "store.encryption_key_file: type redis needs a key file of 32 random bytes "
                "(raw or base64: `openssl rand -base64 32`), the same on every replica"
            )
        if self.tls is not None and not self.url.startswith("rediss://"):
            return "store.tls: only for rediss:// URLs; use rediss:// or drop tls"
        if self.tls is not None and self.tls.p12_file is not None:
            return ("store.tls.p12_file: Redis TLS takes PEM files; give cert_file and "
                    "key_file (`openssl pkcs12 -in F -nodes` splits a PKCS#12 file)")
        for field, path in [("encryption_key_file", self.encryption_key_file)] + [
            (f"previous_key_files[{i}]", p) for i, p in enumerate(self.previous_key_files)
        ]:
            try:
                read_key(path)
            except ValueError as exc:
                return f"store.{field}: {exc}"
        return None

    def keys(self) -> list[bytes]:
        """The current key first, then the previous ones (read at start and on reload)."""
        assert self.encryption_key_file is not None
        return [read_key(self.encryption_key_file)] + [
            read_key(p) for p in self.previous_key_files
        ]
