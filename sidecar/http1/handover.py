"""Handing an app connection's socket over after a CONNECT is answered: to TLS (the server
side, terminated here) or straight to a successor connection of the same server, so that
parsing, limits, keep-alive and pipelining apply inside the tunnel as outside it."""

from __future__ import annotations

import asyncio
from typing import Any, Self

from sidecar.http1.request import Handler


class HandOver:
    """Part of :class:`ServerConnection` (its own module to keep that one readable)."""

    transport: asyncio.Transport | None
    _server: Any
    _upgraded: list[bytes] | None
    _closed: bool
    _idle_timer: asyncio.TimerHandle | None

    def hand_over(self) -> tuple[asyncio.Transport, bytes]:
        """The socket leaves this connection: nothing more is read, answered or timed here.
        Reading stays paused for the new owner. Returns the transport and the bytes that
        came after the current request's head."""
        transport = self.transport
        assert transport is not None
        early = b"".join(self._upgraded or [])
        self._upgraded = None
        self._closed = True  # the handler's return then ends this connection's worker
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._server.forget(self)
        self.transport = None
        return transport, early

    def successor(self, handler: Handler) -> Self:
        """A new connection of the same server (its limits, drain and shutdown apply) whose
        requests go to ``handler``; the caller makes it the socket's protocol."""
        return type(self)(self._server, handler)  # type: ignore[call-arg]


def adopt(conn: asyncio.Protocol, transport: asyncio.Transport, early: bytes) -> None:
    """Make ``conn`` the protocol of a handed-over plain socket and start reading it."""
    transport.set_protocol(conn)
    conn.connection_made(transport)
    transport.resume_reading()
    if early:
        conn.data_received(early)  # type: ignore[attr-defined]
