"""A request as the server hands it to a handler (``sidecar.http1.request``), on a stand-in
connection: how its answer is framed and when it says ``Connection: close``, its body queue,
and what happens when the app is slow or gone."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from multidict import CIMultiDict

from sidecar.http1.request import ClientGone, ServerRequest
from sidecar.http1.wire import HIGH_WATER
from tests.helpers.transport import MockTransport, StubConnection


def make(
    conn: StubConnection,
    method: str = "GET",
    version: str = "1.1",
    headers: dict[str, str] | None = None,
    *,
    keep_alive: bool = True,
    complete: bool = True,
) -> ServerRequest:
    request = ServerRequest(conn, method, "/p", version, CIMultiDict(headers or {}),
                            keep_alive, False)
    request.complete = complete
    return request


async def test_an_answer_without_a_length_is_chunked_and_its_head_leaves_with_the_body() -> None:
    conn = StubConnection()
    request = make(conn)
    request.start(200, CIMultiDict({"X-A": "1"}))
    assert conn.written == b""  # the head waits for the first bytes
    await request.write(b"hello")
    assert conn.written == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n" \
                           b"5\r\nhello\r\n"
    await request.write(b"")  # nothing to send: no empty chunk (that would end the body)
    assert conn.written == b""
    request.finish()
    assert conn.written == b"0\r\n\r\n"
    assert request.finished and request.keep_alive and request.status == 200


async def test_an_http10_answer_without_a_length_ends_at_the_close() -> None:
    conn = StubConnection()
    request = make(conn, version="1.0")
    request.start(200, CIMultiDict())
    await request.write(b"all of it")
    request.finish()
    assert conn.written == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    assert not request.keep_alive


async def test_an_http10_keep_alive_answer_with_a_length_says_so() -> None:
    conn = StubConnection()
    request = make(conn, version="1.0")
    await request.respond(200, CIMultiDict(), b"ok")
    assert conn.written == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                            b"Connection: keep-alive\r\n\r\nok")


@pytest.mark.parametrize(
    ("closing", "pending", "complete", "closes"),
    [
        (False, False, True, False),
        (False, False, False, True),  # the app's body was not read to its end
        (True, False, True, True),  # the connection closes after its last answer
        (True, True, True, False),  # more answers are owed on it first
    ],
    ids=["plain", "body-unread", "closing-last", "closing-more-owed"],
)
async def test_connection_close_is_announced_when_no_request_may_follow(
    closing: bool, pending: bool, complete: bool, closes: bool
) -> None:
    conn = StubConnection()
    conn.closing, conn.has_pending = closing, pending
    request = make(conn, complete=complete)
    await request.respond(204, CIMultiDict(), b"")
    assert (b"Connection: close\r\n" in conn.written) is closes
    assert request.keep_alive is not closes


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304),
                                                ("GET", 103)])
async def test_answers_that_carry_no_body_write_none(method: str, status: int) -> None:
    conn = StubConnection()
    request = make(conn, method=method)
    request.start(status, CIMultiDict({"Content-Length": "5"}))
    await request.write(b"never")
    request.finish()
    head = conn.written
    assert head.startswith(b"HTTP/1.1 %d " % status) and head.endswith(b"Content-Length: 5\r\n\r\n")
    assert b"chunked" not in head


@pytest.mark.parametrize(
    ("headers", "wire"),
    [
        ({}, b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ({"Content-Length": "5"}, b"Content-Length: 5\r\n\r\nhello"),
    ],
    ids=["chunked", "sized"],
)
async def test_the_last_piece_leaves_with_the_head_and_the_end_in_one_write(
    headers: dict[str, str], wire: bytes
) -> None:
    transport = MockTransport()
    request = make(StubConnection(transport))
    request.start(200, CIMultiDict(headers))
    request.finish(b"hello")
    assert transport.writes == 1  # one send() for the whole small answer
    assert transport.take() == b"HTTP/1.1 200 OK\r\n" + wire
    assert request.finished


async def test_a_streamed_chunked_answer_ends_with_its_last_piece_in_one_write() -> None:
    transport = MockTransport()
    request = make(StubConnection(transport))
    request.start(200, CIMultiDict())
    await request.write(b"first")
    transport.take()
    request.finish(b"last")
    assert transport.writes == 2 and transport.take() == b"4\r\nlast\r\n0\r\n\r\n"


async def test_a_whole_local_answer_is_one_write() -> None:
    transport = MockTransport()
    request = make(StubConnection(transport))
    await request.respond(503, CIMultiDict({"Content-Type": "application/json"}), b"{}")
    assert transport.writes == 1
    assert transport.take().endswith(b"Content-Length: 2\r\n\r\n{}")


async def test_start_raw_keeps_the_upstreams_reason_and_header_bytes() -> None:
    conn = StubConnection()
    request = make(conn)
    request.start_raw(299, b"Quite Fine", [(b"x-Case", b"caf\xe9")], sized=True)
    request.finish()
    assert conn.written == b"HTTP/1.1 299 Quite Fine\r\nx-Case: caf\xe9\r\n\r\n"
    with pytest.raises(RuntimeError, match="already started"):
        request.start(200, CIMultiDict())


async def test_writing_to_an_app_that_is_gone_raises_client_gone() -> None:
    transport = MockTransport()
    conn = StubConnection(transport)
    request = make(conn)
    request.start(200, CIMultiDict())
    transport.close()
    with pytest.raises(ClientGone):
        await request.write(b"late")
    with pytest.raises(ClientGone):
        request.finish(b"the last piece")  # body bytes that cannot go out: the app is gone
    request.finish()  # finishing quietly writes nothing to a closed transport
    assert request.finished and conn.written == b""


async def test_a_slow_app_makes_the_writer_wait() -> None:
    conn = StubConnection()
    request = make(conn)
    request.start(200, CIMultiDict({"Content-Length": "6"}))
    conn.flow.pause()
    assert request.write_nowait(b"abc") is True  # written, and the writer should wait
    writing = asyncio.create_task(request.write(b"def"))
    await asyncio.sleep(0)
    assert not writing.done()
    conn.flow.resume()
    await asyncio.wait_for(writing, 1)
    assert conn.written.endswith(b"\r\n\r\nabcdef")


async def test_100_continue_goes_out_only_before_the_answer() -> None:
    conn = StubConnection()
    request = make(conn, "POST", headers={"Content-Length": "3", "Expect": "100-continue"})
    await request.send_continue()
    assert conn.written == b"HTTP/1.1 100 Continue\r\n\r\n"
    request.start(413, CIMultiDict({"Content-Length": "0"}))
    await request.send_continue()
    assert conn.written == b""


async def test_abort_resets_the_connection() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = MockTransport(extra={"socket": ours})
        request = make(StubConnection(transport))
        request.abort()
        assert transport.aborted and not request.keep_alive
        linger = ours.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)
        assert struct.unpack("ii", linger) == (1, 0)  # closing sends RST, not FIN


async def test_a_request_without_a_body_reads_as_ended_and_one_with_a_body_streams() -> None:
    conn = StubConnection()
    bare = make(conn)
    assert not bare.body_exists and await bare.content.readany() == b""
    other = make(conn)
    assert other.content is bare.content  # one shared, always-ended queue

    sized = make(conn, "POST", headers={"Content-Length": "3"})
    chunked = make(conn, "POST", headers={"Transfer-Encoding": "chunked"})
    assert sized.body_exists and sized.content_length == 3 and not sized.chunked
    assert chunked.body_exists and chunked.chunked and chunked.content_length is None
    sized.content.feed(b"x" * (HIGH_WATER + 1))
    assert conn.pauses == [True]  # a full queue stops the app's socket for this request
    await sized.content.readany()
    assert conn.pauses == [True, False]


async def test_take_over_hands_the_connection_to_a_tunnel() -> None:
    class Sink:
        def feed_data(self, data: bytes) -> None: ...

        def feed_eof(self) -> None: ...

    conn = StubConnection()
    request = make(conn, "CONNECT")
    sink = Sink()
    assert request.take_over(sink) is conn.transport
    assert conn.sinks == [sink]
