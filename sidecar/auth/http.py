"""The HTTP side of talking to an identity provider: one pooled TLS session per flow, renewed
when certificates rotate, and network failures turned into clear :class:`AuthError` reasons.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from sidecar.auth.base import AuthError


class IdpSession:
    def __init__(self, ssl_context: ssl.SSLContext, timeout: float) -> None:
        self._ssl = ssl_context
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []

    def client(self) -> aiohttp.ClientSession:
        for old in self._retired:  # calls are single flight: nothing uses them any more
            asyncio.get_running_loop().create_task(old.close())
        self._retired.clear()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=4),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),  # cookies are read by hand where needed
                trust_env=False,
            )
        return self._session

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        """New TLS material for the next call; the old session is closed then."""
        self._ssl = ssl_context
        if self._session is not None:
            self._retired.append(self._session)
            self._session = None

    async def close(self) -> None:
        for session in [*self._retired, self._session]:
            if session is not None:
                await session.close()
        self._retired.clear()


def idp_error(where: str, exc: BaseException, timeout: float) -> AuthError:
    """A network failure on the way to an IdP, as a reason fit for logs and the app."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return AuthError(f"{where}: TLS certificate failed verification ({exc.certificate_error})")
    if isinstance(exc, aiohttp.ClientSSLError):
        return AuthError(f"{where}: TLS handshake failed ({short(exc)})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return AuthError(f"{where}: cannot connect ({exc.os_error.strerror or exc})")
    if isinstance(exc, TimeoutError):
        return AuthError(f"{where}: no answer within {timeout:g} s")
    return AuthError(f"{where}: connection failed ({short(exc)})")


NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


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
