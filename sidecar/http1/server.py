"""The app-facing HTTP/1.1 server: its connections (:mod:`.server_connection`), its handler,
its limits, and a graceful shutdown.

Why not aiohttp's server here: this is the hot path, and a request costs about a third of
the CPU on this protocol (see the benchmark section of the README).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from sidecar.http1.request import Handler
from sidecar.http1.server_connection import ServerConnection
from sidecar.inflight import InFlight


class HttpServer:
    """The listener's connections, handler and limits."""

    def __init__(
        self,
        handler: Handler,
        idle_timeout: float,
        on_malformed: Callable[[str], None],
        max_connections: int = 1024,
        on_shed: Callable[[], None] = lambda: None,
    ) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.on_malformed = on_malformed
        self.max_connections = max_connections
        self.on_shed = on_shed
        self.loop = asyncio.get_running_loop()
        self.connections: set[ServerConnection] = set()
        self._all_closed: asyncio.Event | None = None
        self.inflight = InFlight()  # requests whose handler is running
        # Set when a graceful stop begins: every answer from then on closes its connection,
        # so no app keeps an idle keep-alive connection that the stop would cut.
        self.draining = False

    def shed(self, newcomer: ServerConnection) -> None:
        """Over ``max_connections``: the longest-idle connection makes room, else the new one
        goes. So idle connections cannot starve a health probe or a real request."""
        idle = [c for c in self.connections if c is not newcomer and c.idle and c.transport]
        victim = min(idle, key=lambda c: c.idle_since) if idle else newcomer
        self.on_shed()
        if victim.transport is not None:
            victim.transport.close()

    def forget(self, conn: ServerConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def __call__(self) -> ServerConnection:
        return ServerConnection(self)

    async def shutdown(self, timeout: float) -> None:
        """Close every connection: idle ones at once, the rest once their answer is out."""
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._all_closed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), timeout)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
