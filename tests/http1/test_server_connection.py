"""One app connection of the HTTP/1.1 server (``sidecar.http1.server_connection``) driven
directly, byte by byte, with a recording transport: requests parsed and handed to the
handler, answers framed and kept in order, limits and malformed input refused, and flow
control that must end with the exchange that started it."""

from __future__ import annotations

import asyncio
import json

import pytest
from multidict import CIMultiDict

from sidecar.http1.request import ServerRequest
from sidecar.http1.server import HttpServer
from sidecar.http1.server_connection import MAX_PIPELINED, ServerConnection
from sidecar.http1.wire import HIGH_WATER, MAX_FIELD, MAX_HEAD, MAX_TARGET
from tests.helpers.served import Served
from tests.helpers.transport import MockTransport, settle


def answers(written: bytes) -> list[tuple[bytes, bytes]]:
    """Split sized answers into (head, body) pairs."""
    out = []
    while written:
        head, _, rest = written.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        out.append((head, rest[:length]))
        written = rest[length:]
    return out


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


async def test_a_request_is_parsed_and_handed_to_the_handler() -> None:
    served = Served()
    conn, transport = served.connect()
    conn.data_received(b"POST http://api.example/p?q=1 HTTP/1.1\r\nHost: api.example\r\n"
                       b"X-Two: a\r\nx-two: b\r\nContent-Length: 5\r\n\r\nhel")
    await settle()
    assert not transport.written  # the handler waits for the rest of the body
    conn.data_received(b"lo")
    await settle()
    [request] = served.requests
    assert (request.method, request.raw_path, request.version) == (
        "POST", "http://api.example/p?q=1", "1.1")
    assert request.headers["host"] == "api.example"
    assert request.headers.getall("X-Two") == ["a", "b"]
    assert request.content_length == 5 and not request.chunked and request.body_exists
    assert request.keep_alive and request.complete and request.finished
    assert served.bodies == [b"hello"]
    assert transport.take() == (b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n"
                                b"http://api.example/p?q=1:hello")
    assert not transport.closed  # keep-alive: the next request may come


async def test_a_chunked_request_body_arrives_unframed() -> None:
    served = Served()
    conn, _ = served.connect()
    conn.data_received(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    await settle()
    assert served.requests[0].chunked and served.requests[0].content_length is None
    assert served.bodies == [b"abcde"]


async def test_pipelined_requests_are_answered_in_order() -> None:
    """The first handler is the slowest; the answers still leave in request order."""
    delays = {"/1": 0.05, "/2": 0.0, "/3": 0.01}
    running: list[str] = []
    last_answered = asyncio.Event()

    async def answer(request: ServerRequest) -> None:
        running.append(request.raw_path)
        assert len(running) == 1, "one handler at a time per connection"
        await asyncio.sleep(delays[request.raw_path])
        running.remove(request.raw_path)
        await request.respond(200, CIMultiDict(), request.raw_path.encode())
        if request.raw_path == "/3":
            last_answered.set()

    served = Served(answer)
    conn, transport = served.connect()
    conn.data_received(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HT")
    conn.data_received(b"TP/1.1\r\n\r\n")
    await asyncio.wait_for(last_answered.wait(), 5)
    assert [body for _, body in answers(bytes(transport.written))] == [b"/1", b"/2", b"/3"]
    assert not transport.closed


async def test_too_many_pipelined_requests_stop_the_reading_until_answered() -> None:
    gate = asyncio.Event()

    async def answer(request: ServerRequest) -> None:
        await gate.wait()
        await request.respond(200, CIMultiDict(), b"")

    served = Served(answer)
    conn, transport = served.connect()
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n" * (MAX_PIPELINED + 1))
    await settle()
    assert transport.paused
    gate.set()
    await settle(200)
    assert not transport.paused
    assert len(answers(bytes(transport.written))) == MAX_PIPELINED + 1


@pytest.mark.parametrize(
    ("version", "request_headers", "framing", "closes"),
    [
        ("1.1", b"", b"Transfer-Encoding: chunked\r\n", False),
        ("1.0", b"", b"Connection: close\r\n", True),
        ("1.0", b"Connection: keep-alive\r\n", b"Connection: close\r\n", True),
        ("1.1", b"Connection: close\r\n", b"Transfer-Encoding: chunked\r\nConnection: close\r\n",
         True),
    ],
    ids=["1.1", "1.0", "1.0-keep-alive", "1.1-close"],
)
async def test_an_answer_without_a_length_is_chunked_or_ends_at_the_close(
    version: str, request_headers: bytes, framing: bytes, closes: bool
) -> None:
    async def answer(request: ServerRequest) -> None:
        request.start(200, CIMultiDict({"X-A": "1"}))
        await request.write(b"hello")
        await request.write(b" world")
        request.finish()

    served = Served(answer)
    conn, transport = served.connect()
    conn.data_received(b"GET / HTTP/%b\r\n%b\r\n" % (version.encode(), request_headers))
    await settle()
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" if b"chunked" in framing else b"hello world"
    assert transport.take() == b"HTTP/1.1 200 OK\r\nX-A: 1\r\n" + framing + b"\r\n" + body
    await settle()
    assert transport.closed is closes


async def test_an_http10_keep_alive_with_a_length_stays_open() -> None:
    served = Served()
    conn, transport = served.connect()
    conn.data_received(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    await settle()
    assert transport.take() == (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                                b"Connection: keep-alive\r\n\r\n/a:")
    assert not transport.closed


async def test_a_head_or_304_answer_carries_no_body() -> None:
    async def answer(request: ServerRequest) -> None:
        status = 304 if request.raw_path == "/n" else 200
        request.start(status, CIMultiDict({"Content-Length": "4"}))
        await request.write(b"body")
        request.finish()

    served = Served(answer)
    conn, transport = served.connect()
    conn.data_received(b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\n")
    await settle()
    head_answer, not_modified, rest = transport.take().split(b"\r\n\r\n")
    assert head_answer == b"HTTP/1.1 200 OK\r\nContent-Length: 4"
    assert not_modified.startswith(b"HTTP/1.1 304 ")
    assert not_modified.endswith(b"\r\nContent-Length: 4") and rest == b""


def _refusal(written: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = written.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head and b"Connection: close" in head
    assert len(body) == int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (b"GET /" + b"a" * MAX_TARGET + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_FIELD + b"\r\n\r\n", 431,
         "headers_too_large"),
        (b"GET / HTTP/1.1\r\n"
         + b"".join(b"X-%d: %b\r\n" % (i, b"a" * 1000) for i in range(MAX_HEAD // 1000 + 2))
         + b"\r\n", 431, "headers_too_large"),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
         "bad_request"),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "bad_request"),
    ],
    ids=["414-target", "431-one-line", "431-all-lines", "400-garbage", "400-cl-and-te",
         "400-space-in-name"],
)
async def test_a_refused_head_gets_a_json_4xx_and_the_connection_closes(
    data: bytes, status: int, error: str
) -> None:
    served = Served()
    conn, transport = served.connect()
    conn.data_received(data)
    await settle()
    got, body = _refusal(bytes(transport.written))
    assert (got, body["error"]) == (status, error) and body["message"]
    assert transport.closed and served.requests == []
    assert served.malformed == [error]


async def test_a_head_that_never_ends_is_refused_once_it_is_too_large() -> None:
    """No end of the head in sight: the connection does not buffer it forever."""
    served = Served()
    conn, transport = served.connect()
    conn.data_received(b"GET / HTTP/1.1\r\n")
    line = b"X-Slow: " + b"a" * 1000 + b"\r\n"
    for _ in range((MAX_HEAD + MAX_TARGET) // len(line) + 2):
        if transport.closed:
            break
        conn.data_received(line)
    status, body = _refusal(bytes(transport.written))
    assert (status, body["error"]) == (431, "headers_too_large")


async def test_a_malformed_request_after_a_good_one_is_not_answered_as_if_it_were_it() -> None:
    """The good request gets its answer; no 400 follows it that the app could read as the
    answer to the good one. Then the connection closes."""
    served = Served()
    conn, transport = served.connect()
    conn.data_received(b"GET /ok HTTP/1.1\r\n\r\nNOT HTTP\r\n\r\n")
    await settle()
    assert transport.take() == (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"
                                b"Connection: close\r\n\r\n/ok:")
    assert transport.closed and served.malformed == ["bad_request"]


async def test_a_handler_that_fails_before_answering_gives_a_500() -> None:
    async def answer(request: ServerRequest) -> None:
        raise RuntimeError("boom")

    served = Served(answer)
    conn, transport = served.connect()
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    head, _, body = transport.take().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert json.loads(body)["error"] == "internal_error"
    assert not transport.closed  # the answer was whole: the connection lives on


async def test_a_handler_that_fails_mid_answer_resets_the_connection() -> None:
    async def answer(request: ServerRequest) -> None:
        request.start(200, CIMultiDict({"Content-Length": "10"}))
        await request.write(b"half")
        raise RuntimeError("boom")

    served = Served(answer)
    conn, transport = served.connect()
    conn.data_received(b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
    await settle()
    assert transport.take().endswith(b"\r\n\r\nhalf")  # and nothing after it
    assert transport.aborted
    assert len(served.requests) == 1


async def test_an_app_that_stops_sending_gets_its_complete_requests_answered() -> None:
    served = Served()
    conn, transport = served.connect()
    conn.data_received(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    assert conn.eof_received() is True  # keep the write side open for the answers
    await settle()
    assert [body for _, body in answers(transport.take())] == [b"/a:", b"/b:"]
    assert transport.closed


async def test_an_app_that_hangs_up_stops_its_request() -> None:
    cancelled = asyncio.Event()

    async def answer(request: ServerRequest) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    served = Served(answer)
    conn, _ = served.connect()
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    conn.connection_lost(None)
    await asyncio.wait_for(cancelled.wait(), 1)
    assert served.server.connections == set()


async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    served = Served(idle_timeout=0.2)
    conn, transport = served.connect()
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    assert transport.written and not transport.closed
    await asyncio.sleep(0.5)
    assert transport.closed


async def test_a_connect_head_hands_the_following_bytes_to_the_tunnel() -> None:
    got: list[bytes] = []

    class Sink:
        def feed_data(self, data: bytes) -> None:
            got.append(data)

        def feed_eof(self) -> None:
            got.append(b"<eof>")

    async def answer(request: ServerRequest) -> None:
        assert request.method == "CONNECT" and request.raw_path == "example.com:443"
        client = request.take_over(Sink())
        client.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        request.finished = True

    served = Served(answer)
    conn, transport = served.connect()
    conn.data_received(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                       b"early")
    assert transport.paused  # nothing is read until the handler decides
    await settle()
    assert not transport.paused
    conn.data_received(b"later")
    conn.eof_received()
    assert got == [b"early", b"later", b"<eof>"]
    assert transport.take() == b"HTTP/1.1 200 Connection Established\r\n\r\n"
