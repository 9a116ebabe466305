"""The HTTP/1.1 server over its connections (``sidecar.http1.server``): a graceful shutdown
that answers what is owed, draining that closes after each answer, and shedding connections
past ``max_connections``."""

from __future__ import annotations

import asyncio

from multidict import CIMultiDict

from sidecar.http1.request import ServerRequest
from tests.helpers.served import Served
from tests.helpers.transport import settle


async def test_shutdown_closes_idle_connections_at_once_and_busy_ones_after_their_answer(
) -> None:
    gate = asyncio.Event()

    async def answer(request: ServerRequest) -> None:
        if request.raw_path == "/slow":
            await gate.wait()
        await request.respond(200, CIMultiDict(), b"done")

    served = Served(answer)
    idle_conn, idle = served.connect()
    idle_conn.data_received(b"GET /quick HTTP/1.1\r\n\r\n")
    busy_conn, busy = served.connect()
    busy_conn.data_received(b"GET /slow HTTP/1.1\r\n\r\n")
    fresh_conn, fresh = served.connect()
    await settle()
    stopping = asyncio.create_task(served.server.shutdown(2.0))
    await settle()
    assert idle.closed and not busy.closed
    assert not fresh.closed  # no request begun yet: its first one may be on the way
    fresh_conn.data_received(b"GET /quick HTTP/1.1\r\n\r\n")
    await settle()
    assert fresh.take().endswith(b"Connection: close\r\n\r\ndone") and fresh.closed
    gate.set()
    await asyncio.wait_for(stopping, 1)
    assert busy.take().endswith(b"Connection: close\r\n\r\ndone")
    assert busy.closed and not busy.aborted


async def test_while_draining_every_answer_closes_its_connection() -> None:
    served = Served()
    conn, transport = served.connect()
    conn.data_received(b"GET /a HTTP/1.1\r\n\r\n")
    await settle()
    assert b"Connection: close" not in transport.take()
    served.server.draining = True
    conn.data_received(b"GET /b HTTP/1.1\r\n\r\n")
    await settle()
    assert transport.take().endswith(b"Connection: close\r\n\r\n/b:")
    assert transport.closed


async def test_past_max_connections_the_longest_idle_connection_makes_room() -> None:
    served = Served(max_connections=2)
    older_conn, older = served.connect()
    older_conn.data_received(b"GET /a HTTP/1.1\r\n\r\n")
    await settle()
    await asyncio.sleep(0.01)
    newer_conn, newer = served.connect()
    newer_conn.data_received(b"GET /b HTTP/1.1\r\n\r\n")
    await settle()
    _, newest = served.connect()
    await settle()
    assert older.closed and not newer.closed and not newest.closed
    assert served.shed == 1 and len(served.server.connections) == 2


async def test_past_max_connections_with_none_idle_the_newcomer_goes() -> None:
    gate = asyncio.Event()

    async def answer(request: ServerRequest) -> None:
        await gate.wait()
        await request.respond(200, CIMultiDict(), b"")

    served = Served(answer, max_connections=1)
    busy_conn, busy = served.connect()
    busy_conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    _, newcomer = served.connect()
    await settle()
    assert newcomer.closed and not busy.closed and served.shed == 1
    gate.set()
    await settle()
    assert busy.take().startswith(b"HTTP/1.1 200 OK")
