"""What a signer is: ``sign(data) -> DER CMS``, off the event loop, with clear failures."""

from __future__ import annotations

import base64
from typing import Protocol


class SigningError(Exception):
    """Signing failed; ``reason`` is safe to log (never the data, a PIN or a key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Signer(Protocol):
    detached: bool  # whether the CMS leaves the data out

    async def sign(self, data: bytes) -> bytes:
        """A DER-encoded CMS SignedData over exactly ``data``."""
        ...

    async def close(self) -> None: ...


def b64(der: bytes) -> str:
    """Base64 with no line breaks, as MOEX and MPT want it."""
    return base64.b64encode(der).decode("ascii")
