"""The app-facing connection driven directly, byte by byte, with a recording transport:
flow control that must end with the exchange that started it."""

from __future__ import annotations

import asyncio

from multidict import CIMultiDict

from sidecar.http1.server import AppConnection, AppRequest, ProxyServer
from sidecar.http1.wire import HIGH_WATER
from tests.helpers.transport import MockTransport


async def test_a_body_left_unread_does_not_keep_the_socket_paused() -> None:
    """The handler answers without reading a body whose last bytes filled its queue past
    the high-water mark (the socket was paused for it). The exchange is over and the body
    was complete, so the socket must be read again: else the next request stalls until
    the idle timeout."""
    seen: list[str] = []

    async def handler(request: AppRequest) -> None:
        seen.append(request.raw_path)
        await request.respond(200, CIMultiDict(), b"ok")  # never reads request.content

    server = ProxyServer(handler, 75.0, lambda _: None)
    conn = AppConnection(server)
    transport = MockTransport()
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
