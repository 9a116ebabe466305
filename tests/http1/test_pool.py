"""The pool of upstream connections (``sidecar.http1.pool``): which idle connection it hands
out and when it closes them, real connects (typed failures), and the cap on connections
open at once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict

from sidecar.http1.errors import ConnectFailed, PoolFull
from sidecar.http1.pool import ConnectionPool, request_head
from tests.helpers.upstream import connect, send

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture
async def pool() -> ConnectionPool:
    return ConnectionPool("up", 443, None, connect_timeout=1.0, read_timeout=0.3)


@pytest.fixture
async def origin() -> AsyncIterator[tuple[int, list[int]]]:
    """A plain HTTP server answering every request with ANSWER; yields its port and a list
    with one entry per accepted connection."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], accepted
    server.close()


async def test_the_pool_hands_out_the_newest_fresh_connection_and_retires(
    pool: ConnectionPool,
) -> None:
    pool.keepalive = 0.2
    first, first_transport = connect(pool)
    second, _ = connect(pool)
    for conn in (first, second):
        pending = await send(conn)
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await pending
    pool.release(first, reuse=True)
    pool.release(second, reuse=True)
    assert pool.pooled() is second  # the most recently used first
    pool.release(second, reuse=True)
    await asyncio.sleep(0.25)
    assert pool.pooled() is None  # both idle past keepalive: closed, not handed out
    assert first_transport.closed

    third, third_transport = connect(pool)
    pending = await send(third)
    third.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await pending
    pool.retire()
    pool.release(third, reuse=True)
    assert pool.idle == 0 and third_transport.closed


async def test_a_pooled_connection_the_upstream_closed_leaves_the_pool(
    pool: ConnectionPool,
) -> None:
    conn, _ = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await pending
    pool.release(conn, reuse=True)
    assert pool.idle == 1
    conn.connection_lost(None)
    assert pool.idle == 0 and pool.pooled() is None



def test_request_head_puts_host_first_and_keeps_header_order() -> None:
    headers = CIMultiDict([("Accept", "*/*"), ("X-A", "1"), ("x-a", "2")])
    assert request_head("GET", "/p?q=1", "api.example:8443", headers) == (
        b"GET /p?q=1 HTTP/1.1\r\nHost: api.example:8443\r\nAccept: */*\r\n"
        b"X-A: 1\r\nx-a: 2\r\n\r\n"
    )


async def test_a_real_connection_is_made_counted_and_reused(
    origin: tuple[int, list[int]],
) -> None:
    port, accepted = origin
    pool = ConnectionPool("127.0.0.1", port, None, connect_timeout=1.0, read_timeout=1.0)
    conn = await pool.connect()
    assert pool.in_use == 1
    response = await conn.request("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, False)
    assert response.status == 200 and await response.readany() == b""
    response.close()
    assert (pool.in_use, pool.idle) == (0, 1)
    assert pool.pooled() is conn and accepted == [1]
    pool.release(conn)
    pool.retire()


async def test_a_refused_connect_is_a_typed_failure() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = ConnectionPool("127.0.0.1", port, None, connect_timeout=1.0, read_timeout=1.0)
    with pytest.raises(ConnectFailed) as caught:
        await pool.connect()
    assert caught.value.peer == f"127.0.0.1:{port}" and pool.in_use == 0


async def test_past_max_connections_a_request_waits_for_one_to_come_free(
    origin: tuple[int, list[int]],
) -> None:
    port, accepted = origin
    pool = ConnectionPool("127.0.0.1", port, None, connect_timeout=1.0, read_timeout=1.0,
                          max_connections=1)
    first = await pool.connect()
    response = await first.request("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, False)
    await response.readany()
    waiting = asyncio.create_task(pool.connect())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the one connection allowed is lent out
    response.close()  # back to the pool, clean
    assert await asyncio.wait_for(waiting, 1) is first  # the freed connection, no new one
    assert accepted == [1]
    pool.release(first)
    pool.retire()


async def test_a_request_that_finds_no_room_in_time_gets_pool_full(
    origin: tuple[int, list[int]],
) -> None:
    port, _ = origin
    pool = ConnectionPool("127.0.0.1", port, None, connect_timeout=0.2, read_timeout=1.0,
                          max_connections=1)
    held = await pool.connect()
    with pytest.raises(PoolFull, match=r"all 1 connections busy for 0\.2 s"):
        await pool.connect()
    pool.release(held, reuse=False)
    again = await asyncio.wait_for(pool.connect(), 1)  # room again: a new connection
    pool.release(again, reuse=False)
