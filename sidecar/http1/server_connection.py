"""One app connection of the HTTP/1.1 server, on llhttp (through httptools): it parses
requests, runs one handler at a time (pipelined requests wait their turn), frames each
answer (Content-Length, chunked or close-delimited), and cuts connections that stay idle
or send their head too slowly. A handler gets a :class:`ServerRequest` and answers on it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

import httptools
import structlog
from multidict import CIMultiDict

from sidecar.http1.answer import error_answer
from sidecar.http1.errors import HeadRefused, TooManyAhead
from sidecar.http1.handover import HandOver
from sidecar.http1.request import ClientGone, Handler, ServerRequest, TunnelSink
from sidecar.http1.wire import MAX_FIELD, MAX_HEAD, MAX_TARGET, WriteFlow
from sidecar.inflight import InFlight

log = structlog.get_logger("sidecar.proxy")

MAX_PIPELINED = 16  # requests waiting their turn before the app's socket is not read
MAX_PARSED_AHEAD = 64  # more in one read: the rest is not parsed; the app resends after close


class Server(Protocol):
    """What a connection needs of its server (:class:`sidecar.http1.server.HttpServer`)."""

    handler: Handler
    idle_timeout: float
    on_malformed: Callable[[str], None]
    max_connections: int
    loop: asyncio.AbstractEventLoop
    connections: set[ServerConnection]
    inflight: InFlight
    draining: bool

    def shed(self, newcomer: ServerConnection) -> None: ...

    def forget(self, conn: ServerConnection) -> None: ...


class ServerConnection(HandOver, asyncio.Protocol):
    def __init__(self, server: Server, handler: Handler | None = None) -> None:
        self._server = server
        self._handler = handler or server.handler  # a successor (handover.py) has its own
        self._loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.flow = WriteFlow(self._loop)
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._url_size = 0
        self._fields: list[tuple[str, str]] = []
        self._head_size = 0
        self._in_head = True
        self._quiet = 0  # body bytes fed with no parser call back: a trailer being buffered
        self._receiving: ServerRequest | None = None  # the request whose body is being parsed
        self._current: ServerRequest | None = None  # the request being answered
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._fields_size = 0
        self._pending: deque[ServerRequest] = deque()
        self._reading_paused = False
        # Why the app's socket is not read: a request whose body queue is full (the request
        # itself is the key), "pipeline", "upgrade" or "refused".
        self._pausers: set[object] = set()
        self._upgraded: list[bytes] | None = None  # bytes after a CONNECT head, before take_over
        self._tunnel: TunnelSink | None = None
        self._closed = False
        self.closing = False  # the server is shutting down: answer, then close
        self._fresh = True  # no request has begun here yet
        self.idle_since = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._server.connections.add(self)
        if len(self._server.connections) > self._server.max_connections:
            self._server.shed(self)
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

    def pause_for(self, request: ServerRequest, on: bool) -> None:
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
        else:
            self._quiet += len(data)  # any call back during the feed resets it
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded = [data[exc.args[0]:]]
            self._pause("upgrade", True)  # nothing more is read until the handler decides
            return
        except HeadRefused as exc:
            self._refuse_head(exc)
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, TooManyAhead):
                self.closing = True  # answer what was parsed, then close
                self._pause("pipeline", True)
            elif isinstance(refused, HeadRefused):
                self._refuse_head(refused)
            else:
                self._refuse_head(HeadRefused(400, "bad_request", "malformed HTTP request"),
                                  parser_error=type(exc).__name__)
            return
        if self._in_head and self._head_size > MAX_HEAD + MAX_TARGET:
            self._refuse_head(HeadRefused(
                431, "headers_too_large", f"request headers exceed {MAX_HEAD} bytes"))
        elif self._quiet > MAX_HEAD + MAX_TARGET:
            # httptools holds a trailer line until it ends: one without end is refused here.
            self._refuse_head(HeadRefused(
                431, "headers_too_large", f"request trailers exceed {MAX_HEAD} bytes"))

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._fresh = False
        self._url.clear()
        self._url_size = 0
        self._fields = []
        self._fields_size = 0
        self._in_head = True

    def on_url(self, part: bytes) -> None:
        self._url_size += len(part)
        if self._url_size > MAX_TARGET:
            raise HeadRefused(414, "uri_too_long", f"request target exceeds {MAX_TARGET} bytes")
        self._url.append(part)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._fields_size += size
        if size > MAX_FIELD:
            raise HeadRefused(431, "headers_too_large",
                               f"a request header line exceeds {MAX_FIELD} bytes")
        if not self._in_head:
            # A chunked body's trailer: it counts against the head's limit and is dropped
            # (nothing forwards trailers), so an app cannot stream them without end.
            self._quiet = 0
            if self._fields_size > MAX_HEAD:
                raise HeadRefused(431, "headers_too_large",
                                   f"request headers and trailers exceed {MAX_HEAD} bytes")
            return
        self._fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        if len(self._pending) >= MAX_PARSED_AHEAD:
            raise TooManyAhead
        if self._fields_size > MAX_HEAD:
            raise HeadRefused(431, "headers_too_large", f"request headers exceed {MAX_HEAD} bytes")
        request = ServerRequest(
            self,
            parser.get_method().decode("ascii"),
            b"".join(self._url).decode("utf-8", "surrogateescape"),
            parser.get_http_version(),
            CIMultiDict(self._fields),
            parser.should_keep_alive(),
            parser.should_upgrade(),
            self._loop,
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
        self._quiet = 0
        if self._receiving is not None:
            self._receiving.content.feed(data)

    def on_message_complete(self) -> None:
        request = self._receiving
        if request is not None:
            request.complete = True
            request.content.feed_eof()
            self._receiving = None
        self._in_head = True
        self._quiet = 0

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

    async def _handle(self, request: ServerRequest) -> bool:
        """Run the handler; False when the connection cannot carry another request."""
        server = self._server
        if server.draining:
            request.keep_alive = False  # the app learns from this answer to reconnect
        server.inflight.enter()
        try:
            await self._handler(request)
        except ClientGone:
            return False
        except Exception:
            log.exception("proxy_handler_failed", method=request.method)
            if not request.started and not self._closed:
                await error_answer(
                    500, "internal_error", "the sidecar failed on this request; see its log"
                ).send(request)
            else:
                request.abort()
        finally:
            server.inflight.leave()
        if self._closed:
            return False
        if not request.finished:
            request.abort()  # a handler that did not finish its answer leaves no framing
            return False
        return True

    def _after(self, request: ServerRequest) -> bool:
        self._current = None
        # Its exchange is over: a body it left unread no longer holds the socket (when the
        # body was complete, the stream is at the next request; otherwise the close follows).
        self._pause(request, False)
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        # During a drain the answer said "close" (see _handle); one begun before it said
        # keep-alive, and the connection keeps that promise for one more request.
        if not request.keep_alive or (self.closing and not self._pending):
            transport.close()
            return False
        if self._pending:
            return True
        self.idle_since = self._loop.time()
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
        waited = self._loop.time() - self.idle_since
        if waited >= timeout:
            self.transport.close()
        else:
            self._idle_timer = self._loop.call_later(timeout - waited, self._check_idle)

    def _refuse_head(self, refused: HeadRefused, parser_error: str | None = None) -> None:
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
        transport.write(error_answer(refused.status, refused.error, refused.message).encode())
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

    @property
    def idle(self) -> bool:
        """Between requests: nothing being answered, nothing waiting, no tunnel."""
        return self._current is None and not self._pending and self._tunnel is None

    def shutdown(self) -> None:
        """The server is stopping: idle connections close now, busy ones after their answer.
        A connection that has not begun a request yet is left its moment: its request may
        already be on the way (it is answered, then the connection closes)."""
        self.closing = True
        if (
            self._current is None and not self._pending and self._tunnel is None
            and self.transport is not None and not self._fresh
        ):
            self.transport.close()
