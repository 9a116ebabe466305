"""The upstream connection (``sidecar.http1.client``) driven over a recording transport: what
it writes, how it parses answers byte by byte, and when it may go back to its pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sidecar.http1.errors import Closed, TimedOut
from sidecar.http1.pool import ConnectionPool
from sidecar.http1.wire import HIGH_WATER
from tests.helpers.transport import settle
from tests.helpers.upstream import HEAD_GET, connect, read_all, send


@pytest.fixture
async def pool() -> ConnectionPool:
    return ConnectionPool("up", 443, None, connect_timeout=1.0, read_timeout=0.3)


async def test_the_head_comes_back_parsed_and_the_body_streams_after_it(
    pool: ConnectionPool,
) -> None:
    conn, transport = connect(pool)
    pending = await send(conn)
    assert transport.take() == HEAD_GET
    conn.data_received(b"HTTP/1.1 201 Made\r\nContent-Length: 10\r\nX-Two: a\r\nx-two: b\r\n\r\n01")
    response = await asyncio.wait_for(pending, 1)
    assert (response.status, response.reason) == (201, b"Made")
    assert response.raw_headers == [(b"Content-Length", b"10"), (b"X-Two", b"a"), (b"x-two", b"b")]
    assert response.headers.getall("x-two") == ["a", "b"]
    assert response.connection is conn
    assert await response.readany() == b"01"
    assert not conn.complete  # eight bytes are still owed
    conn.data_received(b"234")
    conn.data_received(b"56789")
    assert await response.read(4) == b"2345"  # the rest stays queued
    assert await read_all(response) == b"6789"
    assert conn.complete and conn.reusable


async def test_a_chunked_answer_is_unframed(pool: ConnectionPool) -> None:
    conn, _ = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    response = await asyncio.wait_for(pending, 1)
    conn.data_received(b"lo\r\n6\r\n world\r\n0\r\n\r\n")
    assert await read_all(response) == b"hello world"
    assert conn.reusable


@pytest.mark.parametrize(
    ("answer", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", True),
    ],
    ids=["1.1", "1.1-close", "1.0", "1.0-keep-alive", "204", "304-with-length"],
)
async def test_keep_alive_is_decided_by_the_answer(
    pool: ConnectionPool, answer: bytes, reusable: bool
) -> None:
    conn, transport = connect(pool)
    pending = await send(conn)
    conn.data_received(answer)
    response = await asyncio.wait_for(pending, 1)
    await read_all(response)
    assert conn.complete and conn.reusable is reusable
    pool.release(conn, reuse=True)
    assert pool.idle == int(reusable) and transport.closed is not reusable
    assert pool.in_use == 0


async def test_a_reused_connection_carries_the_next_exchange(pool: ConnectionPool) -> None:
    conn, transport = connect(pool)
    for body in (b"one", b"two"):
        pending = await send(conn)
        assert transport.take() == HEAD_GET
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n" + body)
        assert await read_all(await pending) == body
        pool.release(conn, reuse=True)
        assert pool.pooled() is conn
    assert not transport.closed


async def test_interim_100_continue_is_skipped(pool: ConnectionPool) -> None:
    conn, _ = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n")
    await settle()
    assert not pending.done()  # not an answer yet
    conn.data_received(b"HTTP/1.1 102 Processing\r\n\r\n"
                       b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = await asyncio.wait_for(pending, 1)
    assert response.status == 200
    assert await read_all(response) == b"ok"
    assert conn.reusable


async def test_head_answers_have_no_body_and_the_next_answer_parses(
    pool: ConnectionPool,
) -> None:
    conn, _ = connect(pool)
    head = b"HEAD /x HTTP/1.1\r\nHost: up\r\n\r\n"
    pending = await send(conn, "HEAD", head)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    response = await asyncio.wait_for(pending, 1)
    assert response.headers["Content-Length"] == "1234"
    assert await response.readany() == b""  # ended at the head: 1234 bytes never come
    assert conn.reusable
    pool.release(conn, reuse=True)
    assert pool.pooled() is conn

    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    response = await asyncio.wait_for(pending, 1)
    assert await read_all(response) == b"ok"
    assert conn.reusable


async def test_a_close_delimited_body_ends_at_eof(pool: ConnectionPool) -> None:
    conn, _ = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\nsome")
    response = await asyncio.wait_for(pending, 1)
    conn.data_received(b" more")
    assert await response.readany() == b"some more"
    assert not conn.complete
    conn.connection_lost(None)  # the upstream closed: that is the end of this body
    assert await response.readany() == b""
    assert conn.closed and not conn.reusable
    pool.release(conn, reuse=True)
    assert pool.idle == 0


async def test_a_close_delimited_body_cut_by_an_error_is_an_error(pool: ConnectionPool) -> None:
    conn, _ = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\npart")
    response = await asyncio.wait_for(pending, 1)
    conn.connection_lost(ConnectionResetError())
    assert await response.readany() == b"part"
    with pytest.raises(Closed):
        await response.readany()


async def test_a_sized_body_cut_short_is_an_error(pool: ConnectionPool) -> None:
    conn, _ = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    response = await asyncio.wait_for(pending, 1)
    conn.connection_lost(None)
    assert await response.readany() == b"half"
    with pytest.raises(Closed):
        await response.readany()


async def test_a_close_before_the_head_fails_the_request(pool: ConnectionPool) -> None:
    conn, _ = connect(pool)
    pending = await send(conn)
    conn.connection_lost(None)
    with pytest.raises(Closed):
        await asyncio.wait_for(pending, 1)
    with pytest.raises(Closed):  # and nothing more can be sent on it
        await conn.request("GET", HEAD_GET, None, False)


async def test_an_unsolicited_answer_closes_the_connection(pool: ConnectionPool) -> None:
    """Bytes while no request is out, or a second answer to one request: the stream can no
    longer be trusted, so the connection is cut and never pooled."""
    conn, transport = connect(pool)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert conn.closed and transport.aborted

    conn, transport = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
                       b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    response = await asyncio.wait_for(pending, 1)
    assert await read_all(response) == b"a"  # the answer asked for is whole
    assert transport.aborted and not conn.reusable
    pool.release(conn, reuse=True)
    assert pool.idle == 0


async def test_a_malformed_answer_fails_the_request_and_closes(pool: ConnectionPool) -> None:
    conn, transport = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 2OO OK\r\n\r\n")
    with pytest.raises(Closed, match="malformed response"):
        await asyncio.wait_for(pending, 1)
    assert transport.aborted


async def test_the_read_timeout_fails_a_silent_upstream(pool: ConnectionPool) -> None:
    conn, transport = connect(pool)
    pending = await send(conn)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimedOut) as caught:
        await asyncio.wait_for(pending, 2)
    assert 0.25 <= loop.time() - started < 1.5
    assert (caught.value.peer, caught.value.seconds) == ("up:443", 0.3)
    assert not caught.value.connecting
    assert transport.aborted


async def test_the_read_timeout_counts_from_the_last_bytes(pool: ConnectionPool) -> None:
    """A body trickling in faster than the timeout lives; one that stops is cut."""
    conn, transport = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    response = await asyncio.wait_for(pending, 1)
    for _ in range(6):  # 0.6 s in all, twice the 0.3 s timeout
        await asyncio.sleep(0.1)
        conn.data_received(b"x")
    assert await response.readany() == b"xxxxxx"
    with pytest.raises(TimedOut):
        await asyncio.wait_for(response.readany(), 2)
    assert transport.aborted


async def test_a_slow_reader_pauses_the_upstream_and_the_timeout_waits(
    pool: ConnectionPool,
) -> None:
    conn, transport = connect(pool)
    pending = await send(conn)
    size = HIGH_WATER + 1
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (size + 5))
    response = await asyncio.wait_for(pending, 1)
    conn.data_received(b"x" * size)
    assert transport.paused  # the queue is over its high-water mark
    await asyncio.sleep(0.5)  # longer than the read timeout: our wait, not the upstream's
    assert not transport.closed
    assert len(await response.readany()) == size
    assert not transport.paused
    conn.data_received(b"12345")
    assert await read_all(response) == b"12345"
    assert conn.reusable


async def test_a_sized_upload_streams_after_the_head(pool: ConnectionPool) -> None:
    conn, transport = connect(pool)

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"de"

    head = b"POST /up HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
    pending = asyncio.create_task(conn.request("POST", head, body(), False))
    await settle()
    assert transport.take() == head + b"abcde"
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await asyncio.wait_for(pending, 1)
    assert conn.reusable


async def test_a_chunked_upload_is_framed_and_ends_with_the_last_chunk(
    pool: ConnectionPool,
) -> None:
    conn, transport = connect(pool)

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"de"

    head = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    pending = asyncio.create_task(conn.request("POST", head, body(), True))
    await settle()
    assert transport.take() == head + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await asyncio.wait_for(pending, 1)


class ReadyBody:
    """A body that says which of its pieces are here already (as the proxy's does): b"" at
    the end, None while the next piece is still on its way."""

    def __init__(self, *pieces: bytes, ended: bool = True) -> None:
        self.pieces = list(pieces)
        self.ended = ended
        self.more = asyncio.Event()

    def take_nowait(self) -> bytes | None:
        if self.pieces:
            return self.pieces.pop(0)
        return b"" if self.ended else None

    def add(self, *pieces: bytes, end: bool) -> None:
        self.pieces += pieces
        self.ended = end
        self.more.set()

    def __aiter__(self) -> ReadyBody:
        return self

    async def __anext__(self) -> bytes:
        while (data := self.take_nowait()) is None:
            await self.more.wait()
            self.more.clear()
        if not data:
            raise StopAsyncIteration
        return data


@pytest.mark.parametrize(
    ("chunked", "wire"),
    [(False, b"abcde"), (True, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")],
    ids=["sized", "chunked"],
)
async def test_a_body_that_is_all_here_leaves_with_the_head_in_one_write(
    pool: ConnectionPool, chunked: bool, wire: bytes
) -> None:
    conn, transport = connect(pool)
    pending = asyncio.create_task(conn.request("POST", b"H", ReadyBody(b"abc", b"de"), chunked))
    await asyncio.sleep(0)  # the request's first step: no task streams this body
    assert transport.writes == 1 and transport.take() == b"H" + wire
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await asyncio.wait_for(pending, 1)
    assert conn.reusable  # nothing is left to send


async def test_what_is_here_goes_with_the_head_and_the_rest_streams_as_it_comes(
    pool: ConnectionPool,
) -> None:
    conn, transport = connect(pool)
    body = ReadyBody(b"abc", ended=False)
    pending = asyncio.create_task(conn.request("POST", b"H", body, True))
    await asyncio.sleep(0)
    assert transport.take() == b"H3\r\nabc\r\n"  # not held back for the next piece
    body.add(b"de", end=True)
    await settle()
    assert transport.take() == b"2\r\nde\r\n0\r\n\r\n"
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await asyncio.wait_for(pending, 1)
    assert conn.reusable


async def test_a_body_broken_before_its_first_byte_sends_nothing(pool: ConnectionPool) -> None:
    class Broken(ReadyBody):
        def take_nowait(self) -> bytes | None:
            raise ConnectionResetError("the app went away")

    conn, transport = connect(pool)
    with pytest.raises(Closed, match="request body broke off"):
        await asyncio.wait_for(conn.request("POST", b"H", Broken(), True), 1)
    assert transport.aborted and transport.take() == b""


async def test_an_upload_waits_while_the_upstream_is_slow(pool: ConnectionPool) -> None:
    conn, transport = connect(pool)
    conn.pause_writing()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        yield b"second"

    pending = asyncio.create_task(conn.request("POST", b"H", body(), False))
    await settle()
    assert transport.take() == b"Hfirst"  # then it waits for the transport to drain
    conn.resume_writing()
    await settle()
    assert transport.take() == b"second"
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await asyncio.wait_for(pending, 1)
    assert conn.reusable


async def test_a_body_partly_here_waits_for_a_slow_upstream_before_the_rest(
    pool: ConnectionPool,
) -> None:
    conn, transport = connect(pool)
    conn.pause_writing()
    body = ReadyBody(b"first", ended=False)
    pending = asyncio.create_task(conn.request("POST", b"H", body, False))
    await asyncio.sleep(0)
    assert transport.take() == b"Hfirst"
    body.add(b"second", end=True)
    await settle()
    assert transport.take() == b""  # the upstream has not drained what it got
    conn.resume_writing()
    await settle()
    assert transport.take() == b"second"
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await asyncio.wait_for(pending, 1)


async def test_an_upload_that_breaks_off_fails_the_request_and_the_connection(
    pool: ConnectionPool,
) -> None:
    conn, transport = connect(pool)

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        raise ConnectionResetError("the app went away")

    pending = asyncio.create_task(conn.request("POST", b"H", body(), True))
    with pytest.raises(Closed, match="request body broke off"):
        await asyncio.wait_for(pending, 1)
    assert transport.aborted and not conn.reusable
    assert transport.take() == b"H3\r\nabc\r\n"  # no last chunk: the upstream sees no end


async def test_an_answer_before_the_upload_ends_leaves_the_connection_unpooled(
    pool: ConnectionPool,
) -> None:
    """The upstream answered early while the body still streams: the exchange is not clean."""
    conn, _ = connect(pool)
    more = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        await more.wait()
        yield b"def"

    pending = asyncio.create_task(conn.request("POST", b"H", body(), False))
    await settle()
    conn.data_received(b"HTTP/1.1 413 Too Big\r\nContent-Length: 0\r\n\r\n")
    response = await asyncio.wait_for(pending, 1)
    assert response.status == 413 and conn.complete and not conn.reusable
    more.set()
    await settle()
    assert conn.reusable  # once the body is out, the stream is at a known place again


async def test_closing_a_response_gives_its_connection_back_only_when_read_whole(
    pool: ConnectionPool,
) -> None:
    conn, transport = connect(pool)
    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = await pending
    assert await read_all(response) == b"ok"
    response.close()
    response.close()  # a second close changes nothing
    assert (pool.in_use, pool.idle) == (0, 1) and pool.pooled() is conn

    pending = await send(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    response = await pending
    response.close()  # unread: the stream is mid-body, the connection cannot be reused
    assert (pool.in_use, pool.idle) == (0, 0) and transport.aborted
