"""The HTTP side of talking to an identity provider: one-shot calls (see
:mod:`sidecar.http1.fetch`), with network failures turned into clear
:class:`AuthError` reasons.
"""

from __future__ import annotations

import ssl
from typing import Any

from sidecar.auth.base import AuthError
from sidecar.http1.fetch import AnswerTooLarge, ConnectFailed, Fetcher, Reply

__all__ = ["NETWORK_ERRORS", "IdpSession", "Reply", "idp_error", "idp_retry_after", "short"]


class IdpSession(Fetcher):
    """A fetcher whose oversized answers are refused as an :class:`AuthError`."""

    async def request(self, method: str, url: str, **kwargs: Any) -> Reply:
        try:
            return await super().request(method, url, **kwargs)
        except AnswerTooLarge as exc:
            raise AuthError(str(exc)) from None


def idp_error(where: str, exc: BaseException, timeout: float) -> AuthError:
    """A network failure on the way to an IdP, as a reason fit for logs and the app."""
    cause = exc.cause if isinstance(exc, ConnectFailed) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return AuthError(f"{where}: TLS certificate failed verification ({cause.verify_message})")
    if isinstance(cause, ssl.SSLError):
        return AuthError(f"{where}: TLS handshake failed ({short(cause.reason or cause)})")
    if isinstance(cause, TimeoutError):
        return AuthError(f"{where}: no answer within {timeout:g} s")
    if isinstance(exc, ConnectFailed):
        reason = getattr(cause, "strerror", None) or short(cause) or type(cause).__name__
        return AuthError(f"{where}: cannot connect ({reason})")
    return AuthError(f"{where}: connection failed ({short(exc) or type(exc).__name__})")


NETWORK_ERRORS = (OSError, TimeoutError)


def idp_retry_after(value: str | None) -> float | None:
    """An IdP's ``Retry-After`` in seconds (the delta-seconds form); None when absent or odd."""
    text = value.strip() if value else ""
    if text.isascii() and text.isdigit():
        return float(text)
    return None


def short(value: object, limit: int = 200) -> str:
    """A printable, bounded rendering of a message from the network."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    return text[:limit]
