"""The upstream connections to one origin: idle keep-alive ones kept for reuse, new ones made
with one TLS context, at most ``max_connections`` at once (as httpcore separates the pool
from the connection). With a :class:`~sidecar.http1.dial.Tunnel`, each new connection is a
CONNECT tunnel through that proxy, with TLS end to end inside it."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from multidict import CIMultiDict

from sidecar.http1.client import UpstreamConnection
from sidecar.http1.dial import Tunnel, open_tunnel
from sidecar.http1.errors import PoolFull, connect_error
from sidecar.http1.wire import head


class ConnectionPool:
    """Idle keep-alive connections to one origin, made with one TLS context; at most
    ``max_connections`` open at once (requests beyond wait for room, up to the connect
    timeout)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float = 30.0,
        max_connections: int | None = None,
        tunnel: Tunnel | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_connections = max_connections
        self._connecting = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self.host = host
        self.port = port
        self.label = f"{host}:{port}"
        self.ssl = ssl_context
        self.tunnel = tunnel
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.retired = False
        self.in_use = 0
        self._idle: list[UpstreamConnection] = []

    def pooled(self) -> UpstreamConnection | None:
        """An idle keep-alive connection, if one is fresh enough (no await on the hot path)."""
        now = self.loop.time()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be stale
            if not conn.closed and now - conn.idle_since < self.keepalive:
                self.in_use += 1
                return conn
            conn.close()
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection (or, after waiting for room, one that came free), counted as in
        use; a failure comes as a typed :class:`~sidecar.http1.errors.TransportError`."""
        if self._full():
            await self._wait_for_room()
            conn = self.pooled()
            if conn is not None:
                return conn
        self._connecting += 1
        try:
            conn = await self._connect()
        except BaseException as exc:
            self._connecting -= 1
            self._wake()  # the room it held is free again
            if isinstance(exc, OSError | TimeoutError):  # ssl.SSLError is an OSError
                raise connect_error(exc, self.label, self.connect_timeout) from None
            raise
        self._connecting -= 1
        self.in_use += 1
        return conn

    def _full(self) -> bool:
        limit = self.max_connections
        return limit is not None and self.in_use + self._connecting >= limit

    async def _wait_for_room(self) -> None:
        deadline = self.loop.time() + self.connect_timeout
        while self._full():
            waiter = self.loop.create_future()
            self._waiting.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - self.loop.time()))
            except TimeoutError:
                raise PoolFull(
                    self.label,
                    f"all {self.max_connections} connections busy for {self.connect_timeout:g} s",
                ) from None
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _wake(self) -> None:
        """Room for one more: the longest waiter goes next."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self) -> UpstreamConnection:
        tls = self.ssl is not None
        if self.tunnel is None:
            connecting = self.loop.create_connection(
                lambda: UpstreamConnection(self),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if tls else None,
                ssl_handshake_timeout=self.connect_timeout if tls else None,
            )
            _, protocol = await asyncio.wait_for(connecting, self.connect_timeout)
            return protocol
        # Through the proxy: the CONNECT exchange and the TLS handshake share one deadline.
        deadline = self.loop.time() + self.connect_timeout
        sock = await open_tunnel(self.tunnel, self.host, self.port, self.connect_timeout)
        try:
            connecting = self.loop.create_connection(
                lambda: UpstreamConnection(self),
                sock=sock,
                ssl=self.ssl,
                server_hostname=self.host if tls else None,
                ssl_handshake_timeout=self.connect_timeout if tls else None,
            )
            async with asyncio.timeout_at(deadline):
                _, protocol = await connecting
        except BaseException:
            sock.close()
            raise
        return protocol

    def release(self, conn: UpstreamConnection, reuse: bool = True) -> None:
        """Take back a lent connection: kept when ``reuse`` and it is clean, else closed."""
        self.in_use -= 1
        if self._waiting:
            self.loop.call_soon(self._wake)  # after this connection is parked or closed
        if not reuse or not conn.reusable or self.retired:
            conn.close()
            return
        now = self.loop.time()
        conn.idle_since = now
        self._idle.append(conn)
        # Connections unused for longer than keepalive sit at the bottom: close them.
        while self._idle and now - self._idle[0].idle_since >= self.keepalive:
            self._idle.pop(0).close()

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def retire(self) -> None:
        """No new requests here: idle connections close now, busy ones when released."""
        self.retired = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @property
    def idle(self) -> int:
        return len(self._idle)


def request_head(
    method: str, path: str, host_header: str, headers: CIMultiDict[str]
) -> bytes:
    items = [("Host", host_header)]
    items.extend(headers.items())
    return head(f"{method} {path} HTTP/1.1", items)
