"""Records at rest: AES-256-GCM under the store key, the credential hash as associated data
(a record copied to another credential's key does not open). Each sealed record names its
key by a short fingerprint, so previous keys still open old records during a rotation."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"1"
_FINGERPRINT = 4
_NONCE = 12


def _fingerprint(key: bytes) -> bytes:
    return hashlib.sha256(b"authsidecar-store-key" + key).digest()[:_FINGERPRINT]


class Sealer:
    def __init__(self, keys: list[bytes]) -> None:
        """``keys``: the current key first (it seals), then previous ones (they only open)."""
        self._current = keys[0]
        self._keys = {_fingerprint(k): AESGCM(k) for k in reversed(keys)}
        self._seal_as = _fingerprint(keys[0])

    def seal(self, record: dict[str, Any], aad: str) -> str:
        nonce = os.urandom(_NONCE)
        plain = json.dumps(record, separators=(",", ":")).encode()
        sealed = self._keys[self._seal_as].encrypt(nonce, plain, aad.encode())
        return base64.b64encode(VERSION + self._seal_as + nonce + sealed).decode()

    def open(self, blob: str | bytes, aad: str) -> dict[str, Any] | None:
        """The record, or None when no key of ours opens it (a key never configured here)."""
        try:
            data = base64.b64decode(blob, validate=True)
        except ValueError:
            return None
        if data[:1] != VERSION:
            return None
        key = self._keys.get(data[1 : 1 + _FINGERPRINT])
        if key is None:
            return None
        nonce = data[1 + _FINGERPRINT : 1 + _FINGERPRINT + _NONCE]
        try:
            plain = key.decrypt(nonce, data[1 + _FINGERPRINT + _NONCE :], aad.encode())
        except InvalidTag:
            return None
        record = json.loads(plain)
        return record if isinstance(record, dict) else None

    def sealed_with_current(self, blob: str | bytes) -> bool:
        try:
            data = base64.b64decode(blob, validate=True)
        except ValueError:
            return False
        return data[1 : 1 + _FINGERPRINT] == self._seal_as
