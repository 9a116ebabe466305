"""The upstream client: pooled keep-alive HTTP/1.1 connections to one target, over TLS.

A small interface (``send`` → response with a streaming body, then ``release``) over the
connection pool in :mod:`sidecar.http1.client`.

New TLS material (a rotated client certificate) starts a new pool: new requests open new
connections with it, while requests in flight finish on the old pool, which closes after them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable
from urllib.parse import urlsplit

from multidict import CIMultiDict

from sidecar.config.models import Timeouts
from sidecar.http1.client import (
    ConnectionPool,
    UpstreamBroken,
    UpstreamResponse,
    request_head,
)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_DEFAULT_PORTS = {"https": 443, "http": 80}


class UpstreamFailure(Exception):
    """The target could not be reached or answered badly; carries the HTTP status to return."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


class _Origin:
    """Scheme, host and port of a target URL, parsed once."""

    __slots__ = ("host", "host_header", "label", "port", "prefix_len", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"no host in {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        if parts.port == _DEFAULT_PORTS[parts.scheme]:
            self.host_header = self.host_header.rsplit(":", 1)[0]
        self.label = f"{self.host}:{self.port}"
        self.prefix_len = len(parts.scheme) + 3 + len(parts.netloc)


class UpstreamClient:
    def __init__(self, ssl_context: ssl.SSLContext, timeouts: Timeouts) -> None:
        self._ssl = ssl_context
        self._timeouts = timeouts
        self._origins: dict[str, _Origin] = {}
        self._pools: dict[str, ConnectionPool] = {}  # by origin label, current TLS material
        self._retired: list[ConnectionPool] = []

    def _origin(self, url: str) -> _Origin:
        end = url.find("/", url.find("://") + 3)
        key = url if end < 0 else url[:end]
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(key)
        return origin

    def _pool(self, origin: _Origin) -> ConnectionPool:
        pool = self._pools.get(origin.label)
        if pool is None:
            pool = self._pools[origin.label] = ConnectionPool(
                origin.host,
                origin.port,
                self._ssl if origin.tls else None,
                connect_timeout=self._timeouts.connect,
                read_timeout=self._timeouts.read,
            )
        return pool

    async def send(
        self,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
        chunked: bool = False,
    ) -> UpstreamResponse:
        """Send a request; the response's body is read from it, then :meth:`release` it."""
        origin = self._origin(url)
        path = url[origin.prefix_len:] or "/"
        pool = self._pool(origin)
        if chunked:
            headers = headers.copy()
            headers["Transfer-Encoding"] = "chunked"
        data = request_head(method, path, origin.host_header, headers)
        # A pooled keep-alive connection can be closed by the upstream just as it is reused.
        # A bodiless idempotent request is then sent again once, on a new connection.
        attempts = 2 if body is None and method in IDEMPOTENT else 1
        for attempt in range(attempts):
            conn = pool.pooled() if attempt == 0 else None  # a retry takes a new connection
            if conn is None:
                try:
                    conn = await pool.connect()
                except Exception as exc:
                    raise _connect_failure(exc, origin.label) from None
            try:
                return await conn.request(method, data, body, chunked)
            except BaseException as exc:
                pool.release(conn, reuse=False)
                if isinstance(exc, UpstreamBroken) and attempt + 1 < attempts:
                    continue
                if isinstance(exc, TimeoutError):
                    raise UpstreamFailure(
                        504, "upstream_timeout",
                        f"{origin.label} sent no response within the read timeout",
                    ) from None
                if isinstance(exc, ConnectionError | OSError):
                    raise UpstreamFailure(
                        502, "upstream_error",
                        f"connection to {origin.label} failed: {exc}",
                    ) from None
                raise
        raise AssertionError("unreachable")

    def release(self, resp: UpstreamResponse, *, discard: bool = False) -> None:
        """The response is finished with; ``discard`` closes its connection instead of reuse."""
        conn = resp.connection
        conn.pool.release(conn, reuse=not discard)
        if conn.pool.retired and conn.pool.in_use <= 0 and conn.pool in self._retired:
            self._retired.remove(conn.pool)

    @property
    def in_use(self) -> int:
        """Connections lent to requests in progress (idle pooled ones not counted)."""
        return sum(p.in_use for p in (*self._pools.values(), *self._retired))

    @property
    def idle(self) -> int:
        return sum(p.idle for p in self._pools.values())

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        """Use new TLS material for new connections; the old pools close once unused."""
        self._ssl = ssl_context
        for pool in self._pools.values():
            pool.retire()
            if pool.in_use > 0:
                self._retired.append(pool)
        self._pools = {}

    async def close(self) -> None:
        for pool in (*self._pools.values(), *self._retired):
            pool.retire()
        self._pools = {}
        await asyncio.sleep(0)  # let aborted transports report connection_lost


def _connect_failure(exc: Exception, host: str) -> UpstreamFailure:
    """A failed connect or TLS handshake as the status and reason the app should see."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamFailure(
            502, "upstream_tls",
            f"TLS certificate of {host} failed verification: {exc.verify_message}",
        )
    if isinstance(exc, ssl.SSLError):
        return UpstreamFailure(
            502, "upstream_tls", f"TLS handshake with {host} failed: {exc.reason or exc}"
        )
    if isinstance(exc, TimeoutError):
        return UpstreamFailure(504, "upstream_timeout", f"connecting to {host} timed out")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return UpstreamFailure(502, "upstream_unreachable", f"cannot connect to {host}: {reason}")
    return UpstreamFailure(
        502, "upstream_error", f"connection to {host} failed: {type(exc).__name__}"
    )
