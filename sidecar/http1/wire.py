"""HTTP/1.1 framing shared by both sides: heads, chunks, and the flow-controlled body queue."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Protocol

DEFAULT_PORTS = {"http": 80, "https": 443}
CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
# A body queue pauses its producer's socket above this and resumes it below LOW_WATER, so a
# slow reader holds at most about this much of a stream in memory.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

# Limits on every head the sidecar parses: app requests (server.py) and the answers of
# upstreams, IdPs and signers (client.py). Without them a peer that never ends its head (or
# its chunked trailers) grows the sidecar's memory without bound.
MAX_TARGET = 8190  # request or status line: nginx's and aiohttp's default buffer size
MAX_FIELD = 8190  # one header line
MAX_HEAD = 32 * 1024  # all header lines of one message; trailers count against it too
MAX_FIELDS = 200  # header lines of one response (tiny fields would otherwise be cheap)

REASONS = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    413: "Content Too Large", 414: "URI Too Long", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 499: "Client Closed Request",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}


def head(first_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A request or status line and its headers, as bytes ready for the socket.

    Values came from llhttp (which refuses CR, LF and NUL in them) or from validated config;
    latin-1 is HTTP's historical charset, so any byte a peer sent goes back out unchanged."""
    lines = [first_line]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Pausable(Protocol):
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class BodyQueue:
    """Body bytes from a parser callback to an awaiting reader, with socket back-pressure.

    ``readany`` returns b"" at the end of the body and raises the error set by the
    connection when the body broke off. ``loop``: the connection's, so that a wait does not
    look it up (on Python 3.11 each lookup is a ``getpid`` system call)."""

    __slots__ = ("_chunks", "_eof", "_exc", "_loop", "_paused", "_size", "_source", "_waiter")

    def __init__(self, source: Pausable, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._source = source
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and not self._paused:
            self._paused = True
            self._source.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        if not self._eof:
            self._exc = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @property
    def at_eof(self) -> bool:
        """Everything was taken and the body is complete: a reader that just took the last
        piece can end its answer with it."""
        return self._eof and not self._chunks

    def read_nowait(self) -> bytes | None:
        """What :meth:`readany` would return without waiting; None when it would wait."""
        if not self._chunks:
            if self._exc is not None:
                raise self._exc
            return b"" if self._eof else None
        return self._take()

    async def readany(self) -> bytes:
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            self._waiter = (self._loop or asyncio.get_running_loop()).create_future()
            await self._waiter
        return self._take()

    def _take(self) -> bytes:
        if len(self._chunks) == 1:
            data = self._chunks.popleft()
        else:  # several small pieces arrived: hand them on as one write
            data = b"".join(self._chunks)
            self._chunks.clear()
        self._size -= len(data)
        if self._paused and self._size < LOW_WATER:
            self._paused = False
            self._source.resume_reading()
        return data

    async def read(self, limit: int) -> bytes:
        """At most ``limit`` bytes (b"" at the end); the rest stays queued."""
        data = await self.readany()
        if len(data) > limit:
            self._chunks.appendleft(data[limit:])
            self._size += len(data) - limit
            data = data[:limit]
        return data


class WriteFlow:
    """A protocol's pause_writing/resume_writing, as something a writer can await."""

    __slots__ = ("_loop", "_paused", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop  # as BodyQueue's
        self._paused = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True

    def resume(self, exc: BaseException | None = None) -> None:
        self._paused = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    async def drain(self) -> None:
        if self._paused:
            waiter = (self._loop or asyncio.get_running_loop()).create_future()
            self._waiters.append(waiter)
            await waiter
