"""The app-facing connection driven directly, byte by byte, with a recording transport:
flow control that must end with the exchange that started it."""

from __future__ import annotations

import asyncio
from typing import Any

from multidict import CIMultiDict

from sidecar.http1.request import ServerRequest
from sidecar.http1.server import HttpServer
from sidecar.http1.server_connection import ServerConnection
from sidecar.http1.wire import HIGH_WATER


class Transport(asyncio.Transport):
    """Records writes and whether reading is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.paused = False
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def test_a_body_left_unread_does_not_keep_the_socket_paused() -> None:
    """The handler answers without reading a body whose last bytes filled its queue past
    the high-water mark (the socket was paused for it). The exchange is over and the body
    was complete, so the socket must be read again: else the next request stalls until
    the idle timeout."""
    seen: list[str] = []

    async def handler(request: ServerRequest) -> None:
        seen.append(request.raw_path)
        await request.respond(200, CIMultiDict(), b"ok")  # never reads request.content

    server = HttpServer(handler, 75.0, lambda _: None)
    conn = ServerConnection(server)
    transport = Transport()
    conn.connection_made(transport)
    size = HIGH_WATER + 1000
    conn.data_received(b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%b"
                       % (size, b"x" * size))
    assert transport.paused  # the body queue is over its high-water mark
    for _ in range(20):
        await asyncio.sleep(0)
    assert seen == ["/first"] and transport.written.endswith(b"ok")
    assert not transport.paused and not transport.closed
    conn.data_received(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(20):
        await asyncio.sleep(0)
    assert seen == ["/first", "/second"]
    conn.connection_lost(None)
