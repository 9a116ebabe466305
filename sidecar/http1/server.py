"""The app-facing HTTP/1.1 server: llhttp (through httptools) on a bare asyncio protocol.

One connection object per app connection. It parses requests, runs one handler at a time
(pipelined requests wait their turn), frames each answer (Content-Length, chunked or
close-delimited), and cuts connections that stay idle or send their head too slowly. A
handler gets an :class:`AppRequest`, streams its body, and writes the answer through it.

Why not aiohttp's server here: this is the hot path, and a request costs about a third of
the CPU on this protocol (see the benchmark section of the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import httptools
import structlog
from multidict import CIMultiDict

from sidecar.http1.wire import LAST_CHUNK, REASONS, BodyQueue, WriteFlow, chunk, head

log = structlog.get_logger("sidecar.proxy")

MAX_TARGET = 8190  # request line: nginx's and aiohttp's default buffer size
MAX_FIELD = 8190  # one header line
MAX_HEAD = 32 * 1024  # all header lines of one request
MAX_PIPELINED = 16  # requests waiting their turn before the app's socket is not read
MAX_PARSED_AHEAD = 64  # more in one read: the rest is not parsed; the app resends after close


class _BodyPause:
    """Lets one request's body queue stop reading the app's socket, under its own name: the
    pause ends with that request's exchange even if its body was never read to the end."""

    __slots__ = ("_conn", "_request")

    def __init__(self, conn: AppConnection, request: AppRequest) -> None:
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


class _TooManyAhead(Exception):
    """Stops the parser: more pipelined requests arrived at once than are kept."""


class _HeadRefused(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class TunnelSink(Protocol):
    """Where a CONNECT tunnel takes the app's bytes once the head is answered."""

    def feed_data(self, data: bytes) -> None: ...
    def feed_eof(self) -> None: ...


Handler = Callable[["AppRequest"], Awaitable[None]]


class AppRequest:
    """One request from the app and the means to answer it."""

    __slots__ = (
        "_chunked_out", "_conn", "_head", "_no_body", "chunked", "complete", "content",
        "content_length", "finished", "headers", "keep_alive", "method", "raw_path", "started",
        "status", "upgrade", "version",
    )

    def __init__(
        self,
        conn: AppConnection,
        method: str,
        raw_path: str,
        version: str,
        headers: CIMultiDict[str],
        keep_alive: bool,
        upgrade: bool,
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
            BodyQueue(_BodyPause(conn, self)) if self.chunked or self.content_length else _NO_BODY
        )
        self.complete = False
        self.started = False
        self.finished = False
        self.status: int | None = None
        self._head: bytes | None = None
        self._chunked_out = False
        self._no_body = False

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

    def finish(self) -> None:
        """The answer is complete."""
        out = self._head or b""
        self._head = None
        if self._chunked_out:
            out += LAST_CHUNK
        transport = self._conn.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out)
        self.finished = True

    async def respond(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        """A whole answer made by the sidecar itself, in one write."""
        headers["Content-Length"] = str(len(body))
        self.start(status, headers)
        await self.write(body)
        self.finish()

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

    async def drain(self) -> None:
        await self._conn.flow.drain()


class AppConnection(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.flow = WriteFlow()
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._url_size = 0
        self._fields: list[tuple[str, str]] = []
        self._head_size = 0
        self._in_head = True
        self._receiving: AppRequest | None = None  # the request whose body is being parsed
        self._current: AppRequest | None = None  # the request being answered
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._fields_size = 0
        self._pending: deque[AppRequest] = deque()
        self._reading_paused = False
        # Why the app's socket is not read: a request whose body queue is full (the request
        # itself is the key), "pipeline", "upgrade" or "refused".
        self._pausers: set[object] = set()
        self._upgraded: list[bytes] | None = None  # bytes after a CONNECT head, before take_over
        self._tunnel: TunnelSink | None = None
        self._closed = False
        self.closing = False  # the server is shutting down: answer, then close
        self._idle_since = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._server.connections.add(self)
        self._idle_timer = self._loop.call_later(self._server.idle_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.forget(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        gone = ClientGone("the app closed its connection")
        for request in (self._receiving, self._current, *self._pending):
            if request is not None:
                request.content.set_exception(gone)
        self._pending.clear()
        if self._tunnel is not None:
            self._tunnel.feed_eof()
        self.flow.resume(gone)
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()  # an app that hung up stops its upstream request too
        self.transport = None

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def pause_for(self, request: AppRequest, on: bool) -> None:
        """A request's body queue is full (or has drained)."""
        self._pause(request, on)

    def _pause(self, reason: object, on: bool) -> None:
        """Reading stops while any reason holds, and resumes only when none does."""
        if on:
            self._pausers.add(reason)
        else:
            self._pausers.discard(reason)
        transport = self.transport
        if transport is None or self._closed:
            return
        if self._pausers and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not self._pausers and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def eof_received(self) -> bool:
        if self._tunnel is not None:
            self._tunnel.feed_eof()
            return True  # keep the app's side open for the remote's answer
        receiving = self._receiving
        if receiving is not None:  # cut short: it is never answered
            receiving.content.set_exception(ClientGone("the app stopped mid-request"))
            if receiving in self._pending:
                self._pending.remove(receiving)
        # Complete requests still get their answers, then the connection closes.
        self.closing = True
        return self._current is not None or bool(self._pending)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.feed_data(data)
            return
        if self._upgraded is not None:
            self._upgraded.append(data)
            return
        if self._in_head:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded = [data[exc.args[0]:]]
            self._pause("upgrade", True)  # nothing more is read until the handler decides
            return
        except _HeadRefused as exc:
            self._refuse_head(exc)
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, _TooManyAhead):
                self.closing = True  # answer what was parsed, then close
                self._pause("pipeline", True)
            elif isinstance(refused, _HeadRefused):
                self._refuse_head(refused)
            else:
                self._refuse_head(_HeadRefused(400, "bad_request", "malformed HTTP request"),
                                  parser_error=type(exc).__name__)
            return
        if self._in_head and self._head_size > MAX_HEAD + MAX_TARGET:
            self._refuse_head(_HeadRefused(
                431, "headers_too_large", f"request headers exceed {MAX_HEAD} bytes"))

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._url_size = 0
        self._fields = []
        self._fields_size = 0
        self._in_head = True

    def on_url(self, part: bytes) -> None:
        self._url_size += len(part)
        if self._url_size > MAX_TARGET:
            raise _HeadRefused(414, "uri_too_long", f"request target exceeds {MAX_TARGET} bytes")
        self._url.append(part)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._fields_size += size
        if size > MAX_FIELD:
            raise _HeadRefused(431, "headers_too_large",
                               f"a request header line exceeds {MAX_FIELD} bytes")
        self._fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        if len(self._pending) >= MAX_PARSED_AHEAD:
            raise _TooManyAhead
        if self._fields_size > MAX_HEAD:
            raise _HeadRefused(431, "headers_too_large", f"request headers exceed {MAX_HEAD} bytes")
        request = AppRequest(
            self,
            parser.get_method().decode("ascii"),
            b"".join(self._url).decode("utf-8", "surrogateescape"),
            parser.get_http_version(),
            CIMultiDict(self._fields),
            parser.should_keep_alive(),
            parser.should_upgrade(),
        )
        self._in_head = False
        self._head_size = 0
        self._receiving = request
        self._pending.append(request)
        if self._worker is None:
            self._worker = self._loop.create_task(self._serve())
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if len(self._pending) >= MAX_PIPELINED:
            self._pause("pipeline", True)

    def on_body(self, data: bytes) -> None:
        if self._receiving is not None:
            self._receiving.content.feed(data)

    def on_message_complete(self) -> None:
        request = self._receiving
        if request is not None:
            request.complete = True
            request.content.feed_eof()
            self._receiving = None
        self._in_head = True

    # -- running handlers ----------------------------------------------------------------------

    async def _serve(self) -> None:
        """One task per connection (not per request) answers its requests in order."""
        try:
            while True:
                while not self._pending:
                    self._wakeup = self._loop.create_future()
                    await self._wakeup
                    self._wakeup = None
                request = self._pending.popleft()
                if len(self._pending) < MAX_PIPELINED and not self.closing:
                    self._pause("pipeline", False)
                self._current = request
                if not await self._handle(request) or not self._after(request):
                    return
        except asyncio.CancelledError:
            return  # the app went away, or the server is closing the connection
        finally:
            self._worker = None

    async def _handle(self, request: AppRequest) -> bool:
        """Run the handler; False when the connection cannot carry another request."""
        server = self._server
        server.inflight += 1
        try:
            await server.handler(request)
        except ClientGone:
            return False
        except Exception:
            log.exception("proxy_handler_failed", method=request.method)
            if not request.started and not self._closed:
                await request.respond(
                    500, json_headers(),
                    json_body("internal_error", "the sidecar failed on this request; see its log"),
                )
            else:
                request.abort()
        finally:
            server.request_done()
        if self._closed:
            return False
        if not request.finished:
            request.abort()  # a handler that did not finish its answer leaves no framing
            return False
        return True

    def _after(self, request: AppRequest) -> bool:
        self._current = None
        # Its exchange is over: a body it left unread no longer holds the socket (when the
        # body was complete, the stream is at the next request; otherwise the close follows).
        self._pause(request, False)
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if not request.keep_alive or (self.closing and not self._pending):
            transport.close()
            return False
        if self._pending:
            return True
        self._idle_since = self._loop.time()
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_later(self._server.idle_timeout, self._check_idle)
        return True

    def _check_idle(self) -> None:
        """Close a connection idle (or stuck in its request head) for ``idle_timeout``.

        One timer per connection that re-arms itself, instead of one per request."""
        self._idle_timer = None
        if self._closed or self.transport is None:
            return
        timeout = self._server.idle_timeout
        if self._current is not None or self._pending or self._tunnel is not None:
            self._idle_timer = self._loop.call_later(timeout, self._check_idle)
            return
        waited = self._loop.time() - self._idle_since
        if waited >= timeout:
            self.transport.close()
        else:
            self._idle_timer = self._loop.call_later(timeout - waited, self._check_idle)

    def _refuse_head(self, refused: _HeadRefused, parser_error: str | None = None) -> None:
        """Input the sidecar will not parse: one warning; requests complete before it still
        get their answers, and a JSON 4xx goes out only when nothing else is owed (it must
        not read as the answer to an earlier request). Then the connection closes."""
        log.warning("malformed_request_refused", status=refused.status, error=refused.error,
                    parser_error=parser_error)
        self._server.on_malformed(refused.error)
        transport = self.transport
        if transport is None:
            return
        self.closing = True
        self._pause("refused", True)  # nothing more is read from this connection
        receiving = self._receiving
        if receiving is not None:  # its body broke off: it is never sent on as complete
            receiving.content.set_exception(ClientGone("malformed request body"))
            if receiving in self._pending:
                self._pending.remove(receiving)
            elif receiving is self._current and not receiving.started and self._worker:
                self._worker.cancel()  # its upstream send (if any) is aborted with it
                self._current = None
        if self._current is not None or self._pending:
            return  # the answers owed go out first; the last one closes the connection
        if self._worker is not None:
            self._worker.cancel()
        body = json_body(refused.error, refused.message)
        headers = json_headers()
        headers["Content-Length"] = str(len(body))
        headers["Connection"] = "close"
        line = f"HTTP/1.1 {refused.status} {REASONS.get(refused.status, 'Bad Request')}"
        transport.write(head(line, headers.items()) + body)
        transport.close()

    # -- tunnels -------------------------------------------------------------------------------

    def tunnel_to(self, sink: TunnelSink) -> asyncio.Transport:
        assert self.transport is not None
        self._tunnel = sink
        early, self._upgraded = self._upgraded or [], None
        for data in early:
            if data:
                sink.feed_data(data)
        self._pausers.clear()  # the tunnel does its own flow control on the transport
        self._pause("upgrade", False)
        return self.transport

    def shutdown(self) -> None:
        """The server is stopping: idle connections close now, busy ones after their answer."""
        self.closing = True
        if (
            self._current is None and not self._pending and self._tunnel is None
            and self.transport is not None
        ):
            self.transport.close()


class ProxyServer:
    """The listener's connections, handler and limits."""

    def __init__(
        self, handler: Handler, idle_timeout: float, on_malformed: Callable[[str], None]
    ) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.on_malformed = on_malformed
        self.loop = asyncio.get_running_loop()
        self.connections: set[AppConnection] = set()
        self._all_closed: asyncio.Event | None = None
        self.inflight = 0  # requests whose handler is running
        self._idle: asyncio.Future[None] | None = None

    def request_done(self) -> None:
        self.inflight -= 1
        if not self.inflight and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until no request is in progress; False if ``seconds`` passed first."""
        if not self.inflight:
            return True
        if self._idle is None or self._idle.done():
            self._idle = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), seconds)
        except TimeoutError:
            return False
        return True

    def forget(self, conn: AppConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def __call__(self) -> AppConnection:
        return AppConnection(self)

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


def json_headers() -> CIMultiDict[str]:
    return CIMultiDict({"Content-Type": "application/json", "Cache-Control": "no-store"})


def json_body(error: str, message: str, **extra: object) -> bytes:
    body: dict[str, object] = {"error": error, "message": message, **extra}
    return json.dumps(body, ensure_ascii=False).encode()
