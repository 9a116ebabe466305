"""HTTP/1.1 framing on both sides of the hot path, against a scripted TLS upstream that
answers with exact bytes: chunked and close-delimited bodies, HEAD, 1xx, 304, pipelining,
HTTP/1.0 clients, keep-alive reuse and the read timeout; and the framing pieces of
``sidecar.http1.wire`` on their own (heads, chunks, the body queue, write flow)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.http1.wire import HIGH_WATER, BodyQueue, WriteFlow, chunk, head
from tests.helpers.scripted import GET, ScriptedServers, ok
from tests.helpers.scripted import ScriptedUpstream as RawUpstream  # the name its tests use


@pytest.fixture
async def raw(scripted_upstreams: ScriptedServers) -> RawUpstream:
    return await scripted_upstreams.start(RawUpstream(), "raw")


@pytest.fixture
async def proxy(make_sidecar: Any, raw: RawUpstream) -> Sidecar:
    sidecar: Sidecar = await make_sidecar(
        {"target": raw.url, "timeouts": {"read": 1.0}}
    )
    return sidecar


async def exchange(sidecar: Sidecar, data: bytes, *, until_close: bool = False) -> bytes:
    """Send raw bytes to the proxy port; read one answer (or everything until close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(data)
    await writer.drain()
    try:
        if until_close:
            return await asyncio.wait_for(reader.read(), 10)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        try:
            return head + await asyncio.wait_for(reader.read(65536), 0.5)
        except TimeoutError:
            return head
    finally:
        writer.close()


async def test_chunked_upstream_answer_is_rechunked_for_the_app(
    proxy: Sidecar, raw: RawUpstream
) -> None:
    raw.answers["/c"] = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    answer = await exchange(proxy, GET % b"c")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"b\r\nhello world\r\n0\r\n\r\n"
    assert b"authorization: bearer " in raw.requests[0].lower()


async def test_close_delimited_answer_reaches_an_http10_app_whole(
    proxy: Sidecar, raw: RawUpstream
) -> None:
    raw.answers["/eof"] = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100_000
    raw.close_after.add("/eof")
    answer = await exchange(
        proxy, b"GET http://api.moex.com/eof HTTP/1.0\r\nHost: api.moex.com\r\n\r\n",
        until_close=True,
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head
    assert body == b"x" * 100_000


async def test_head_answer_with_a_length_has_no_body_and_the_connection_is_reused(
    proxy: Sidecar, raw: RawUpstream
) -> None:
    raw.answers["/h"] = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    raw.answers["/after"] = ok(b"next")
    head = b"HEAD http://api.moex.com/h HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"
    answer = await exchange(proxy, head + GET % b"after")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 1234\r\n" in answer
    assert answer.endswith(b"\r\n\r\nnext")  # nothing between the HEAD answer and the next
    assert raw.connections == 1


async def test_interim_100_is_skipped_and_304_keeps_its_length(
    proxy: Sidecar, raw: RawUpstream
) -> None:
    raw.answers["/i"] = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")
    raw.answers["/n"] = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"a\"\r\n\r\n"
    first = await exchange(proxy, GET % b"i")
    assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(b"final")
    second = await exchange(proxy, GET % b"n")
    assert second.startswith(b"HTTP/1.1 304 Not Modified\r\n")
    assert b"Content-Length: 99" in second and second.endswith(b"\r\n\r\n")


async def test_pipelined_requests_are_answered_in_order(
    proxy: Sidecar, raw: RawUpstream
) -> None:
    for name in (b"p1", b"p2", b"p3"):
        raw.answers["/" + name.decode()] = ok(name)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    writer.write(GET % b"p1" + GET % b"p2" + GET % b"p3")
    await writer.drain()
    bodies = []
    for _ in range(3):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        bodies.append(await reader.readexactly(length))
    writer.close()
    assert bodies == [b"p1", b"p2", b"p3"]


async def test_chunked_upload_is_sent_chunked_and_a_sized_one_with_its_length(
    proxy: Sidecar, raw: RawUpstream
) -> None:
    raw.answers["/up"] = ok(b"got")
    chunked = (b"POST http://api.moex.com/up HTTP/1.1\r\nHost: api.moex.com\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    sized = (b"POST http://api.moex.com/up HTTP/1.1\r\nHost: api.moex.com\r\n"
             b"Content-Length: 5\r\n\r\nfghij")
    assert (await exchange(proxy, chunked)).endswith(b"got")
    assert (await exchange(proxy, sized)).endswith(b"got")
    assert raw.bodies == [b"abcde", b"fghij"]
    assert b"transfer-encoding: chunked" in raw.requests[0].lower()
    assert b"content-length: 5" in raw.requests[1].lower()
    assert b"transfer-encoding" not in raw.requests[1].lower()


async def test_keep_alive_connections_are_reused_upstream(
    proxy: Sidecar, raw: RawUpstream
) -> None:
    raw.answers["/k"] = ok(b"k")
    for _ in range(5):
        assert (await exchange(proxy, GET % b"k")).endswith(b"k")
    assert raw.connections == 1
    assert proxy.upstreams["moex-ntb"].client.idle == 1


async def test_silent_upstream_gets_a_504_after_the_read_timeout(
    proxy: Sidecar, raw: RawUpstream
) -> None:
    raw.silent.add("/slow")
    answer = await exchange(proxy, GET % b"slow")
    assert answer.startswith(b"HTTP/1.1 504 ")
    assert b'"error": "upstream_timeout"' in answer


async def test_a_malformed_upstream_answer_is_a_502(proxy: Sidecar, raw: RawUpstream) -> None:
    raw.answers["/bad"] = b"HTTP/1.1 2OO OK\r\n\r\n"
    raw.close_after.add("/bad")
    answer = await exchange(proxy, GET % b"bad")
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert b'"upstream": "moex-ntb"' in answer


async def test_curl_http10_and_keepalive_through_the_proxy(
    proxy: Sidecar, raw: RawUpstream
) -> None:
    """curl as the app: HTTP/1.0 and HTTP/1.1 with two URLs on one connection."""
    raw.answers["/a"] = ok(b"A")
    raw.answers["/b"] = ok(b"B")
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--proxy", f"http://127.0.0.1:{proxy.proxy_port}",
        "http://api.moex.com/a", "http://api.moex.com/b",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out == b"AB"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--http1.0", "--proxy", f"http://127.0.0.1:{proxy.proxy_port}",
        "http://api.moex.com/a", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out == b"A"



# -- sidecar.http1.wire on its own -------------------------------------------------------------


def test_a_head_is_crlf_framed_and_keeps_latin1_bytes() -> None:
    assert head("HTTP/1.1 200 OK", [("X-A", "1"), ("X-Name", "caf\u00e9")]) == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-Name: caf\xe9\r\n\r\n")
    assert head("GET / HTTP/1.1", []) == b"GET / HTTP/1.1\r\n\r\n"


def test_a_chunk_is_sized_in_hex() -> None:
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


class Source:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False


async def test_the_body_queue_pauses_its_source_above_high_water_until_below_low_water() -> None:
    source = Source()
    queue = BodyQueue(source)
    queue.feed(b"a" * HIGH_WATER)
    assert not source.paused  # at the mark, not above it
    queue.feed(b"b")
    assert source.paused and source.pauses == 1
    queue.feed(b"c")
    assert source.pauses == 1  # paused once, not once per piece
    assert await queue.readany() == b"a" * HIGH_WATER + b"bc"  # pieces handed on as one
    assert not source.paused


async def test_read_with_a_limit_leaves_the_rest_queued() -> None:
    queue = BodyQueue(Source())
    queue.feed(b"abc")
    queue.feed(b"defg")
    queue.feed_eof()
    assert await queue.read(2) == b"ab"
    assert await queue.read(3) == b"cde"
    assert await queue.read(10) == b"fg"
    assert await queue.read(10) == b""


async def test_the_body_queue_wakes_a_reader_and_ends_with_eof_or_the_error() -> None:
    queue = BodyQueue(Source())
    reading = asyncio.create_task(queue.readany())
    await asyncio.sleep(0)
    assert queue.read_nowait() is None and not reading.done()
    queue.feed(b"one")
    assert await reading == b"one"
    queue.feed(b"two")
    queue.feed_eof()
    assert queue.read_nowait() == b"two"
    assert await queue.readany() == b""
    queue.set_exception(ConnectionResetError())  # after the end: changes nothing
    assert await queue.readany() == b""

    broken = BodyQueue(Source())
    broken.feed(b"part")
    broken.set_exception(ConnectionResetError("cut"))
    assert await broken.readany() == b"part"  # what arrived is still read first
    with pytest.raises(ConnectionResetError, match="cut"):
        await broken.readany()
    with pytest.raises(ConnectionResetError):
        broken.read_nowait()


async def test_write_flow_holds_writers_while_paused_and_passes_an_error_on() -> None:
    flow = WriteFlow()
    await asyncio.wait_for(flow.drain(), 1)  # not paused: no wait
    flow.pause()
    waiting = asyncio.create_task(flow.drain())
    await asyncio.sleep(0)
    assert flow.paused and not waiting.done()
    flow.resume()
    await asyncio.wait_for(waiting, 1)
    flow.pause()
    waiting = asyncio.create_task(flow.drain())
    await asyncio.sleep(0)
    flow.resume(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError, match="gone"):
        await waiting
