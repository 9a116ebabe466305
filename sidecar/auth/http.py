"""The HTTP side of talking to an identity provider: one-shot calls (see
:mod:`sidecar.http1.fetch`), with transport failures turned into :class:`AuthError`.
"""

from __future__ import annotations

from sidecar.auth.base import AuthError, Failure
from sidecar.http1.errors import (
    ProxyAuthRefused,
    ProxyRefused,
    ProxyUnreachable,
    TransportError,
    printable,
)
from sidecar.http1.fetch import Fetched, Fetcher

__all__ = ["Fetched", "Fetcher", "idp_error", "short"]


# The egress proxy's failures carry the code the API leg answers with, so that one runbook
# entry covers both.
_PROXY_CODES: tuple[tuple[type[TransportError], str], ...] = (
    (ProxyAuthRefused, "egress_proxy_auth"),
    (ProxyUnreachable, "egress_proxy_unreachable"),
    (ProxyRefused, "egress_proxy_refused"),
)


def idp_error(where: str, exc: TransportError) -> AuthError:
    """A failure on the way to an IdP, as a reason fit for logs and the app."""
    for kind, code in _PROXY_CODES:
        if isinstance(exc, kind):
            return AuthError(f"{where}: {code}: {exc.describe()}", kind=Failure.UNAVAILABLE)
    return AuthError(f"{where}: {exc.describe()}", kind=Failure.UNAVAILABLE)


short = printable  # a printable, bounded rendering of a message from the network
