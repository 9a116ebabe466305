"""HS256 JWTs for the sandbox IdPs: real-looking tokens that only the issuing emulator can
verify (the sidecar reads them unverified, as it does real ones)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, claims: Mapping[str, Any], header: Mapping[str, Any] | None = None) -> str:
    head = {"alg": "HS256", "typ": "JWT", **(header or {})}
    signing_input = (
        b64url(json.dumps(head, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
    )
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def verify(key: bytes, token: str) -> dict[str, Any] | None:
    """The claims of a token this key signed, else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
    expected = hmac.new(key, signing_input, hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(expected, b64url_decode(parts[2])):
            return None
        claims = json.loads(b64url_decode(parts[1]))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None
