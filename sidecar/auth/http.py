"""The HTTP side of talking to an identity provider: one-shot calls (see
:mod:`sidecar.http1.fetch`), with transport failures turned into :class:`AuthError`.
"""

from __future__ import annotations

from sidecar.auth.base import AuthError, Failure
from sidecar.http1.errors import TransportError, printable
from sidecar.http1.fetch import Fetched, Fetcher

__all__ = ["Fetched", "Fetcher", "idp_error", "short"]


def idp_error(where: str, exc: TransportError) -> AuthError:
    """A failure on the way to an IdP, as a reason fit for logs and the app."""
    return AuthError(f"{where}: {exc.describe()}", kind=Failure.UNAVAILABLE)


short = printable  # a printable, bounded rendering of a message from the network
