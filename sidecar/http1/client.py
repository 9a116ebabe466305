"""The upstream side of the hot path: one HTTP/1.1 keep-alive connection over TLS, parsed
by llhttp (through httptools) on a bare asyncio protocol; its pool is :mod:`.pool`.

A connection carries one request at a time. It writes the request head (and streams the
body, chunked when the app's was), hands back the response head as soon as it is parsed,
and queues the response body with back-pressure. It returns to its pool only when the
exchange ended cleanly and both sides allow keep-alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Protocol, cast

import httptools
from multidict import CIMultiDict

from sidecar.http1.errors import Closed, TimedOut, TooLarge, TransportError
from sidecar.http1.wire import (
    HIGH_WATER,
    LAST_CHUNK,
    MAX_FIELD,
    MAX_FIELDS,
    MAX_HEAD,
    MAX_TARGET,
    BodyQueue,
    WriteFlow,
    chunk,
)


class Pool(Protocol):
    """What a connection needs of its pool (:class:`sidecar.http1.pool.ConnectionPool`)."""

    label: str  # host:port, for errors
    loop: asyncio.AbstractEventLoop
    read_timeout: float

    def release(self, conn: UpstreamConnection, reuse: bool = True) -> None: ...

    def forget(self, conn: UpstreamConnection) -> None: ...


class _Unsolicited(Exception):
    """Stops the parser at an answer to no request."""


class UpstreamResponse:
    """A response head as received (raw bytes, decoded only when asked) and its body queue.

    :meth:`close` gives the connection back to its pool, which keeps it only when this answer
    was read to its end and both sides allow keep-alive: whoever holds a response closes it,
    and no other code hands connections back (as httpcore's response stream does)."""

    __slots__ = ("_conn", "_headers", "closed", "content", "raw_headers", "reason", "status")

    def __init__(self, conn: UpstreamConnection, status: int, reason: bytes,
                 raw_headers: list[tuple[bytes, bytes]]) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers
        self._headers: CIMultiDict[str] | None = None
        self.content = BodyQueue(conn, conn.pool.loop)
        self.closed = False

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict(
                (n.decode("latin-1"), v.decode("latin-1")) for n, v in self.raw_headers
            )
        return self._headers

    @property
    def connection(self) -> UpstreamConnection:
        return self._conn

    def close(self) -> None:
        """Done with this answer (read or not); safe to call more than once."""
        if not self.closed:
            self.closed = True
            self._conn.pool.release(self._conn)

    async def readany(self) -> bytes:
        return await self.content.readany()

    async def read(self, limit: int) -> bytes:
        return await self.content.read(limit)


class UpstreamConnection(asyncio.Protocol):
    """One TLS connection to the target; ``pool`` takes it back after a clean exchange."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.flow = WriteFlow(self._loop)
        self._parser = httptools.HttpResponseParser(self)
        self._fields: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._in_head = True  # else header callbacks are the trailers of a chunked body
        self._head_bytes = 0  # raw bytes fed while in a head (llhttp buffers partial lines)
        self._fields_size = 0  # name + value bytes of this message's fields and trailers
        self._field_count = 0
        self._quiet = 0  # bytes fed since the parser last called back (a partial trailer)
        self._called = False
        self._method = ""
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._close_delimited = False
        self._pump: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._last_io = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.complete = False  # the last response was read to its end
        self.keep_alive = False
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fail(Closed(self.pool.label, "closed"), eof=exc is None)
        self.flow.resume(Closed(self.pool.label, "closed"))
        if self._pump is not None:
            self._pump.cancel()
        self.transport = None

    def eof_received(self) -> bool:
        return False  # a half-closed upstream is a closed one

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self._last_io = self._loop.time()  # the wait was ours, not the upstream's
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._last_io = self._loop.time()
        if self._waiter is None and self._response is None:
            self.close()  # bytes while no request is out: nothing may be read from here
            return
        if self._in_head:
            self._head_bytes += len(data)
        self._called = False
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            refused = exc.__context__
            if isinstance(refused, TransportError):
                self._fail(refused)
            elif not isinstance(refused, _Unsolicited):
                self._fail(Closed(self.pool.label, f"malformed response: {exc!r}"))
            self.close()
            return
        # httptools keeps a header line until it ends, so the parser's own calls alone do not
        # bound what it holds: count the raw bytes of a head, and of reads with no call back
        # (a trailer line, a chunk extension) in a body.
        self._quiet = 0 if self._called else self._quiet + len(data)
        if (self._in_head and self._head_bytes > MAX_HEAD + MAX_TARGET) or self._quiet > MAX_HEAD:
            self._fail(self._too_large(f"response headers over {MAX_HEAD} bytes"))
            self.close()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # Every message (a 1xx, the answer, the next answer) starts with its own fields.
        self._fields = []
        self._reason = b""
        self._in_head = True
        self._fields_size = self._field_count = 0
        self._called = True

    def on_status(self, reason: bytes) -> None:
        self._called = True
        reason = self._reason + reason  # llhttp hands it over in pieces across reads
        if len(reason) > MAX_TARGET:
            raise self._too_large(f"a response status line over {MAX_TARGET} bytes")
        self._reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._called = True
        size = len(name) + len(value)
        self._fields_size += size
        self._field_count += 1
        if size > MAX_FIELD:
            raise self._too_large(f"a response header line over {MAX_FIELD} bytes")
        if self._fields_size > MAX_HEAD:
            raise self._too_large(f"response headers over {MAX_HEAD} bytes")
        if self._field_count > MAX_FIELDS:
            raise self._too_large(f"more than {MAX_FIELDS} response header lines")
        if self._in_head:
            self._fields.append((name, value))
        # Trailers (after the head) are counted, then dropped: the answer's head is already
        # on its way to the app, and they must never be read as the next answer's headers.

    def _too_large(self, what: str) -> TransportError:
        if self._in_head:
            return TooLarge(self.pool.label, what)
        # Trailers: the head went out already, so for its reader the body broke off.
        return Closed(self.pool.label, what.replace("header", "trailer"))

    def on_headers_complete(self) -> None:
        self._called = True
        self._in_head = False
        self._head_bytes = 0
        status = self._parser.get_status_code()
        fields, self._fields = self._fields, []
        if status < 200:
            return  # 100 Continue and friends: the real answer follows
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            # An answer nobody asked for (a request smuggled past us, or a confused server):
            # this connection's stream can no longer be trusted.
            self.close()
            raise _Unsolicited
        sized = chunked = False
        for name, value in fields:
            lower = name.lower()
            if lower == b"content-length":
                sized = True
            elif lower == b"transfer-encoding":
                # Only a final "chunked" frames the body; another coding ends at the close.
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        response = UpstreamResponse(self, status, self._reason, fields)
        if self._method == "HEAD":
            # llhttp cannot be told the request was HEAD: end the message here and start
            # the next one on a fresh parser.
            keep_alive = self._parser.should_keep_alive()
            self._parser = httptools.HttpResponseParser(self)
            self._in_head = True  # the fresh parser's first bytes are a head
            response.content.feed_eof()
            self._message_done(keep_alive)
        else:
            self._response = response
            self._close_delimited = not (sized or chunked) and status not in (204, 304)
        if not waiter.done():
            waiter.set_result(response)

    def on_body(self, data: bytes) -> None:
        self._called = True
        if self._response is not None:
            self._response.content.feed(data)

    def on_chunk_header(self) -> None:
        self._called = True

    def on_chunk_complete(self) -> None:
        self._called = True

    def on_message_complete(self) -> None:
        self._called = True
        self._in_head = True  # what follows is the next answer's head
        response, self._response = self._response, None
        if response is None:
            return  # the end of a 1xx, or of a HEAD answer already closed above
        response.content.feed_eof()
        self._message_done(self._parser.should_keep_alive())

    # -- one exchange --------------------------------------------------------------------------

    async def request(self, method: str, request_head: bytes, body: AsyncIterable[bytes] | None,
                      chunked: bool) -> UpstreamResponse:
        """Send a request and wait for the response head (the body streams on)."""
        transport = self.transport
        if transport is None or self.closed:
            raise Closed(self.pool.label, "closed")
        self.complete = False
        self._method = method
        waiter = self._waiter = self._loop.create_future()
        self._last_io = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self.pool.read_timeout, self._check_read)
        if body is None:
            transport.write(request_head)
        else:
            self._send_start(transport, request_head, body, chunked)
        try:
            return await waiter
        except BaseException:
            self.close()
            raise

    def _send_start(self, transport: asyncio.Transport, head: bytes,
                    body: AsyncIterable[bytes], chunked: bool) -> None:
        """The head with what of the body is here already: a small body usually is, and the
        whole request is then one write, with no task. A task streams the rest (and waits
        for a slow upstream); a body queue holds at most about HIGH_WATER before that."""
        take = getattr(body, "take_nowait", None)  # a body that can say what is ready
        out, size = [head], 0
        try:
            while take is not None and size < HIGH_WATER and (data := take()) is not None:
                if not data:  # the end: nothing left to stream
                    transport.write(b"".join([*out, LAST_CHUNK] if chunked else out))
                    return
                out.append(chunk(data) if chunked else data)
                size += len(data)
        except Exception as exc:
            self._body_broke(exc)
            return
        if size:  # what is here goes now; the rest streams as it comes
            transport.write(b"".join(out))
        self._pump = self._loop.create_task(self._send_body(b"" if size else head, body, chunked))

    async def _send_body(
        self, pending: bytes, body: AsyncIterable[bytes], chunked: bool
    ) -> None:
        """Stream the body; ``pending``: the head, when it waits for the first piece."""
        transport = self.transport
        assert transport is not None
        try:
            if not pending:
                await self.flow.drain()  # after what _send_start wrote
            async for data in body:
                if not data:
                    continue
                transport.write(pending + (chunk(data) if chunked else data))
                pending = b""
                self._last_io = self._loop.time()
                await self.flow.drain()
            if chunked:
                pending += LAST_CHUNK
            if pending:
                transport.write(pending)
            self._last_io = self._loop.time()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._body_broke(exc)
        finally:
            self._pump = None

    def _body_broke(self, exc: BaseException) -> None:
        """The app's upload broke off: a truncated body must not look complete upstream."""
        self._fail(Closed(self.pool.label, f"request body broke off: {type(exc).__name__}"))
        self.close()

    def _message_done(self, keep_alive: bool) -> None:
        self.complete = True
        self.keep_alive = keep_alive

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self._pump is None and not self.closed

    def _fail(self, exc: BaseException, *, eof: bool = False) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        response, self._response = self._response, None
        if response is not None:
            if eof and self._close_delimited:
                response.content.feed_eof()  # the close is how this answer ends
            else:
                response.content.set_exception(exc)

    def _check_read(self) -> None:
        """The read timeout: one self-rearming timer per connection, not one per read."""
        self._timer = None
        if self.closed or (self._waiter is None and self._response is None):
            return
        timeout = self.pool.read_timeout
        if self._reading_paused:  # our reader is slow, not the upstream
            self._timer = self._loop.call_later(timeout, self._check_read)
            return
        waited = self._loop.time() - self._last_io
        if waited >= timeout:
            self._fail(TimedOut(self.pool.label, timeout))
            self.close()
        else:
            self._timer = self._loop.call_later(timeout - waited, self._check_read)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
