"""The upstream client: pooled keep-alive HTTP/1.1 connections to one target, over TLS.

A small interface (``send`` → response with a streaming ``content``, then ``release``) so a
faster client can replace aiohttp's later without the pipeline noticing.

New TLS material (a rotated client certificate) starts a new pool: new requests open new
connections with it, while requests in flight finish on the old pool, which closes after them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from sidecar.config.models import Timeouts

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

# aiohttp would add these when the app did not send them; a proxy must not.
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UpstreamFailure(Exception):
    """The target could not be reached or answered badly; carries the HTTP status to return."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


@dataclass(eq=False)
class _Pool:
    session: aiohttp.ClientSession
    active: int = 0
    retired: bool = False


class UpstreamClient:
    def __init__(self, ssl_context: ssl.SSLContext, timeouts: Timeouts) -> None:
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect, sock_read=timeouts.read
        )
        self._pool: _Pool | None = None
        self._owners: dict[aiohttp.ClientResponse, _Pool] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _current(self) -> _Pool:
        if self._pool is None:
            self._pool = _Pool(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        ssl=self._ssl, limit=0, keepalive_timeout=30, ttl_dns_cache=60
                    ),
                    timeout=self._timeout,
                    auto_decompress=False,  # the body passes byte for byte
                    skip_auto_headers=_SKIP_AUTO,
                    cookie_jar=aiohttp.DummyCookieJar(),  # never carry cookies between apps
                    trust_env=False,  # the sidecar is the proxy: ignore HTTP_PROXY in its env
                )
            )
        return self._pool

    async def send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> aiohttp.ClientResponse:
        pool = self._current()
        pool.active += 1
        # A pooled keep-alive connection can be closed by the upstream just as it is reused.
        # A bodiless idempotent request is then sent again once, on a new connection.
        attempts = 2 if body is None and method in IDEMPOTENT else 1
        try:
            for attempt in range(attempts):
                try:
                    resp = await pool.session.request(
                        method, url, headers=headers, data=body, allow_redirects=False
                    )
                    break
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    if attempt + 1 == attempts:
                        raise
        except BaseException as exc:
            self._done(pool)
            if isinstance(exc, Exception):
                raise _failure(exc, f"{url.host}:{url.port}") from None
            raise
        self._owners[resp] = pool
        return resp

    def release(self, resp: aiohttp.ClientResponse, *, discard: bool = False) -> None:
        """The response is finished with; ``discard`` closes its connection instead of reuse."""
        if discard:
            resp.close()
        else:
            resp.release()
        pool = self._owners.pop(resp, None)
        if pool is not None:
            self._done(pool)

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        """Use new TLS material for new connections; the old pool closes once unused."""
        self._ssl = ssl_context
        old, self._pool = self._pool, None
        if old is not None:
            old.retired = True
            self._close_if_unused(old)

    def _done(self, pool: _Pool) -> None:
        pool.active -= 1
        self._close_if_unused(pool)

    def _close_if_unused(self, pool: _Pool) -> None:
        if pool.retired and pool.active <= 0 and not pool.session.closed:
            task = asyncio.get_running_loop().create_task(pool.session.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.session.close()
        for resp, pool in list(self._owners.items()):
            resp.close()
            await pool.session.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _failure(exc: Exception, host: str) -> UpstreamFailure:
    """An aiohttp error as the status and reason the app should see."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return UpstreamFailure(
            502, "upstream_tls",
            f"TLS certificate of {host} failed verification: {exc.certificate_error}",
        )
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return UpstreamFailure(502, "upstream_tls", f"TLS handshake with {host} failed: {exc}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamFailure(504, "upstream_timeout", f"connecting to {host} timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return UpstreamFailure(502, "upstream_unreachable", f"cannot connect to {host}: {reason}")
    if isinstance(exc, TimeoutError):
        return UpstreamFailure(
            504, "upstream_timeout", f"{host} sent no response within the read timeout"
        )
    return UpstreamFailure(
        502, "upstream_error", f"connection to {host} failed: {type(exc).__name__}"
    )
