"""One request as the HTTP/1.1 server received it, and the means to answer it: the object a
handler gets (the proxy pipeline and the admin routes alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from multidict import CIMultiDict

from sidecar.http1.wire import LAST_CHUNK, REASONS, BodyQueue, WriteFlow, chunk


class ServerConnection(Protocol):
    """What a request needs of the connection it came on (``server.ServerConnection``)."""

    transport: asyncio.Transport | None
    flow: WriteFlow

    def pause_for(self, request: ServerRequest, on: bool) -> None: ...

    def tunnel_to(self, sink: TunnelSink) -> asyncio.Transport: ...

    def hand_over(self) -> tuple[asyncio.Transport, bytes]: ...

    def successor(self, handler: Handler) -> asyncio.Protocol: ...


class _BodyPause:
    """Lets one request's body queue stop reading the app's socket, under its own name: the
    pause ends with that request's exchange even if its body was never read to the end."""

    __slots__ = ("_conn", "_request")

    def __init__(self, conn: ServerConnection, request: ServerRequest) -> None:
        self._conn, self._request = conn, request

    def pause_reading(self) -> None:
        self._conn.pause_for(self._request, True)

    def resume_reading(self) -> None:
        self._conn.pause_for(self._request, False)


class _NoBody(BodyQueue):
    """The body of every request without one: always at its end, never fed."""

    def __init__(self) -> None:
        super().__init__(cast(Any, None))
        self._eof = True

    def feed(self, data: bytes) -> None:  # llhttp sends no body bytes for these
        raise RuntimeError("a request without a body got body bytes")

    def set_exception(self, exc: BaseException) -> None:
        pass  # shared: one request's fate is not another's


_NO_BODY = _NoBody()


def _reason(status: int) -> bytes:
    return REASONS.get(status, "Unknown").encode()


class ClientGone(ConnectionError):
    """The app closed its connection before its request was done."""


class TunnelSink(Protocol):
    """Where a CONNECT tunnel takes the app's bytes once the head is answered."""

    def feed_data(self, data: bytes) -> None: ...
    def feed_eof(self) -> None: ...


Handler = Callable[["ServerRequest"], Awaitable[None]]


class ServerRequest:
    """One request from the app and the means to answer it."""

    __slots__ = (
        "_chunked_out", "_conn", "_head", "_no_body", "chunked", "complete", "content",
        "content_length", "finished", "headers", "keep_alive", "method", "raw_path", "started",
        "status", "upgrade", "version",
    )

    def __init__(
        self,
        conn: ServerConnection,
        method: str,
        raw_path: str,
        version: str,
        headers: CIMultiDict[str],
        keep_alive: bool,
        upgrade: bool,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None  # llhttp checked it
        self.chunked = "Transfer-Encoding" in headers
        # Most requests (GET) have no body: they share one queue that is already at its end.
        self.content = (
            BodyQueue(_BodyPause(conn, self), loop)
            if self.chunked or self.content_length
            else _NO_BODY
        )
        self.complete = False
        self.started = False
        self.finished = False
        self.status: int | None = None
        self._head: bytes | None = None
        self._chunked_out = False
        self._no_body = False

    @property
    def peer_host(self) -> str | None:
        """The app's address (for access decisions off the hot path)."""
        transport = self._conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else None

    @property
    def body_exists(self) -> bool:
        return self.chunked or bool(self.content_length)

    # -- answering -----------------------------------------------------------------------------

    async def send_continue(self) -> None:
        if not self.started and self._conn.transport is not None:
            self._conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def start(self, status: int, headers: CIMultiDict[str]) -> None:
        """Fix the status and headers; they leave with the first body bytes (or finish())."""
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.start_raw(status, b"", raw, sized="Content-Length" in headers)

    def start_raw(
        self, status: int, reason: bytes, raw: list[tuple[bytes, bytes]], sized: bool
    ) -> None:
        """Like :meth:`start` with headers as raw bytes; ``sized``: they hold a length."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        self._no_body = self.method == "HEAD" or status in (204, 304) or status < 200
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, reason or _reason(status))]
        for name, value in raw:
            parts += (name, b": ", value, b"\r\n")
        if not self._no_body and not sized:
            if self.version == "1.1":
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self._chunked_out = True
            else:
                self.keep_alive = False  # HTTP/1.0: the end of the body is the close
        conn = self._conn
        if self.upgrade or not self.complete or (conn.closing and not conn.has_pending):
            # An unread body (or a refused upgrade) leaves the stream at an unknown place; a
            # closing connection ends with the last answer it owes.
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif self.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._head = b"".join(parts)

    async def write(self, data: bytes) -> None:
        if self.write_nowait(data):
            await self._conn.flow.drain()

    def write_nowait(self, data: bytes) -> bool:
        """Write without waiting; True when the app is slow and the writer should drain()."""
        if not data or self._no_body:
            return False
        payload = chunk(data) if self._chunked_out else data
        if self._head is not None:
            payload, self._head = self._head + payload, None
        conn = self._conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ClientGone("the app closed its connection")
        transport.write(payload)
        return conn.flow.paused

    def finish(self, last: bytes = b"") -> None:
        """The answer is complete. ``last``: its final body bytes, which leave in one write
        with whatever is still held (the head of a small answer, the end of a chunked one)."""
        out = self._head or b""
        self._head = None
        if last and not self._no_body:
            if self._chunked_out:
                out += b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last)
            else:
                out += last
        elif self._chunked_out:
            out += LAST_CHUNK
        transport = self._conn.transport
        if transport is None or transport.is_closing():
            if last:
                raise ClientGone("the app closed its connection")
        elif out:
            transport.write(out)
        self.finished = True

    async def respond(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        """A whole answer made by the sidecar itself, in one write."""
        headers["Content-Length"] = str(len(body))
        self.start(status, headers)
        self.finish(body)

    def abort(self) -> None:
        """Cut the app's connection with a reset: a broken upstream answer must not look
        complete, not even to an HTTP/1.0 app whose answer ends at the close."""
        self.keep_alive = False
        transport = self._conn.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError, TypeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    # -- CONNECT -------------------------------------------------------------------------------

    def take_over(self, sink: TunnelSink) -> asyncio.Transport:
        """From now on the app's bytes go to ``sink``; returns the app's transport."""
        return self._conn.tunnel_to(sink)

    @property
    def connection(self) -> ServerConnection:
        """The app connection this request came on (for a CONNECT that hands it over)."""
        return self._conn

    async def drain(self) -> None:
        await self._conn.flow.drain()
