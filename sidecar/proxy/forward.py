"""The upstream client: pooled keep-alive HTTP/1.1 connections to one target, over TLS.

A small interface (``send`` → response with a streaming ``content``) so a faster client can
replace aiohttp's later without the pipeline noticing.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from sidecar.config.models import Timeouts

# aiohttp would add these when the app did not send them; a proxy must not.
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UpstreamFailure(Exception):
    """The target could not be reached or answered badly; carries the HTTP status to return."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


class UpstreamClient:
    def __init__(self, ssl_context: ssl.SSLContext, timeouts: Timeouts) -> None:
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect, sock_read=timeouts.read
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self._ssl, limit=0, keepalive_timeout=30, ttl_dns_cache=60
                ),
                timeout=self._timeout,
                auto_decompress=False,  # the body passes byte for byte
                skip_auto_headers=_SKIP_AUTO,
                cookie_jar=aiohttp.DummyCookieJar(),  # never carry one app's cookies to another
                trust_env=False,  # the sidecar is the proxy: ignore HTTP_PROXY in its own env
            )
        return self._session

    async def send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> aiohttp.ClientResponse:
        host = f"{url.host}:{url.port}"
        try:
            return await self._client().request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UpstreamFailure(
                502, "upstream_tls",
                f"TLS certificate of {host} failed verification: {exc.certificate_error}",
            ) from None
        except aiohttp.ClientConnectorSSLError as exc:
            raise UpstreamFailure(
                502, "upstream_tls", f"TLS handshake with {host} failed: {exc.os_error}"
            ) from None
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamFailure(
                504, "upstream_timeout", f"connecting to {host} timed out"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamFailure(
                502, "upstream_unreachable",
                f"cannot connect to {host}: {exc.os_error.strerror or exc.os_error}",
            ) from None
        except TimeoutError:
            raise UpstreamFailure(
                504, "upstream_timeout", f"{host} sent no response within the read timeout"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailure(
                502, "upstream_error", f"connection to {host} failed: {type(exc).__name__}"
            ) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
