"""The upstream client: pooled keep-alive HTTP/1.1 connections to one target, over TLS.

A small interface (``send`` → a response with a streaming body, which gives its connection
back when closed) over the connection pool in :mod:`sidecar.http1.client`, with transport
failures turned into the status and error code the app should see.

New TLS material (a rotated client certificate) starts a new pool: new requests open new
connections with it, while requests in flight finish on the old pool, which closes after them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable
from urllib.parse import urlsplit

from multidict import CIMultiDict

from sidecar.config.sections import Timeouts
from sidecar.http1.client import UpstreamResponse
from sidecar.http1.dial import Dialer
from sidecar.http1.errors import (
    Closed,
    ConnectFailed,
    PoolFull,
    ProxyAuthRefused,
    ProxyRefused,
    ProxyUnreachable,
    TimedOut,
    TlsFailed,
    TransportError,
)
from sidecar.http1.pool import ConnectionPool, request_head
from sidecar.http1.wire import DEFAULT_PORTS

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


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
        self.port = parts.port or DEFAULT_PORTS[parts.scheme]
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        if parts.port == DEFAULT_PORTS[parts.scheme]:
            self.host_header = self.host_header.rsplit(":", 1)[0]
        self.label = f"{self.host}:{self.port}"
        self.prefix_len = len(parts.scheme) + 3 + len(parts.netloc)


class UpstreamClient:
    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        timeouts: Timeouts,
        max_connections: int | None = None,
        dialer: Dialer | None = None,
    ) -> None:
        self._ssl = ssl_context
        self._dialer = dialer
        self._timeouts = timeouts
        self._max_connections = max_connections
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
                max_connections=self._max_connections,
                tunnel=self._dialer.tunnel_for(origin.host, origin.port, origin.tls)
                if self._dialer is not None
                else None,
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
        """Send a request; read the response's body from it, then ``close()`` it."""
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
            try:
                conn = pool.pooled() if attempt == 0 else None  # a retry takes a new one
                if conn is None:
                    conn = await pool.connect()
            except TransportError as exc:
                raise _failure(exc) from None
            try:
                return await conn.request(method, data, body, chunked)
            except BaseException as exc:
                pool.release(conn, reuse=False)
                if isinstance(exc, Closed) and attempt + 1 < attempts:
                    continue
                if isinstance(exc, TransportError):
                    raise _failure(exc) from None
                raise
        raise AssertionError("unreachable")

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
        self._retired = [p for p in self._retired if p.in_use > 0]  # drained ones: forgotten
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


def _failure(exc: TransportError) -> UpstreamFailure:
    """A transport failure as the status and error code the app should see. A failed
    egress proxy has codes of its own: the fix is with the network team, not the API."""
    if isinstance(exc, ProxyAuthRefused):
        return UpstreamFailure(502, "egress_proxy_auth", exc.describe())
    if isinstance(exc, ProxyUnreachable):
        return UpstreamFailure(502, "egress_proxy_unreachable", exc.describe())
    if isinstance(exc, ProxyRefused):
        return UpstreamFailure(502, "egress_proxy_refused", exc.describe())
    if isinstance(exc, TlsFailed):
        return UpstreamFailure(502, "upstream_tls", exc.describe())
    if isinstance(exc, TimedOut):
        return UpstreamFailure(504, "upstream_timeout", exc.describe())
    if isinstance(exc, ConnectFailed):
        return UpstreamFailure(502, "upstream_unreachable", exc.describe())
    if isinstance(exc, PoolFull):
        return UpstreamFailure(503, "upstream_busy", exc.describe())
    return UpstreamFailure(502, "upstream_error", exc.describe())
