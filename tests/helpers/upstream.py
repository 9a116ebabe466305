"""Upstream connections lent from a pool on a recording transport, and the steps of one
exchange on them, for the client and pool tests."""

from __future__ import annotations

import asyncio

from sidecar.http1.client import UpstreamConnection, UpstreamResponse
from sidecar.http1.pool import ConnectionPool
from tests.helpers.transport import MockTransport, settle

HEAD_GET = b"GET /x HTTP/1.1\r\nHost: up\r\n\r\n"


def connect(pool: ConnectionPool) -> tuple[UpstreamConnection, MockTransport]:
    """A connection as ``pool.connect()`` would hand it out, on a recording transport."""
    conn = UpstreamConnection(pool)
    transport = MockTransport(conn)
    conn.connection_made(transport)
    pool.in_use += 1
    return conn, transport


async def send(
    conn: UpstreamConnection, method: str = "GET", head: bytes = HEAD_GET
) -> asyncio.Task[UpstreamResponse]:
    """Start a request without a body; its head is on the transport when this returns."""
    task = asyncio.create_task(conn.request(method, head, None, False))
    await settle()
    return task


async def read_all(response: UpstreamResponse) -> bytes:
    body = b""
    while data := await response.readany():
        body += data
    return body
