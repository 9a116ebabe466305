"""The HTTP side of talking to an identity provider: one-shot calls (see
:mod:`sidecar.http1.fetch`), with transport failures turned into :class:`AuthError`.
"""

from __future__ import annotations

from sidecar.auth.base import AuthError, Failure
from sidecar.http1.errors import TransportError, printable
from sidecar.http1.fetch import Fetched, Fetcher

__all__ = ["Fetched", "Fetcher", "idp_error", "idp_retry_after", "short"]


def idp_error(where: str, exc: TransportError) -> AuthError:
    """A failure on the way to an IdP, as a reason fit for logs and the app."""
    return AuthError(f"{where}: {exc.describe()}", kind=Failure.UNAVAILABLE)


def idp_retry_after(value: str | None) -> float | None:
    """An IdP's ``Retry-After`` in seconds (the delta-seconds form); None when absent or odd."""
    text = value.strip() if value else ""
    if text.isascii() and text.isdigit():
        return float(text)
    return None


short = printable  # a printable, bounded rendering of a message from the network
