"""Wire-level edge cases of the HTTP/1.1 hot path: framing headers an app or an upstream
lists in ``Connection``, pipelined requests next to malformed input or a half-close,
truncated answers to HTTP/1.0 apps, and back-pressure while a request waits its turn."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from sidecar.app import Sidecar
from tests.helpers.scripted import (
    GET,
    ScriptedServers,
    ScriptedUpstream,
    answer_of,
    ok,
    read_answer,
)


@pytest.fixture
async def up(scripted_upstreams: ScriptedServers) -> ScriptedUpstream:
    return await scripted_upstreams.start(ScriptedUpstream(default=ok(b"unscripted")))


@pytest.fixture
async def proxy(make_sidecar: Any, up: ScriptedUpstream) -> Sidecar:
    sidecar: Sidecar = await make_sidecar({"target": up.url, "timeouts": {"read": 2.0}})
    return sidecar


async def _open(sidecar: Sidecar) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)


def _post(path: bytes, body: bytes, *extra: bytes) -> bytes:
    return (b"POST http://api.moex.com%b HTTP/1.1\r\nHost: api.moex.com\r\n%bContent-Length: %d"
            b"\r\n\r\n%b") % (path, b"".join(h + b"\r\n" for h in extra), len(body), body)


def _post_head(path: bytes, length: int) -> bytes:
    return (b"POST http://api.moex.com%b HTTP/1.1\r\nHost: api.moex.com\r\n"
            b"Content-Length: %d\r\n\r\n") % (path, length)


# -- framing headers named in Connection -------------------------------------------------------


async def test_app_listing_content_length_in_connection_cannot_smuggle_a_request(
    proxy: Sidecar, up: ScriptedUpstream
) -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"
    up.answers["/up"] = ok(b"up")
    reader, writer = await _open(proxy)
    writer.write(_post(b"/up", smuggled, b"Connection: Content-Length"))
    _, body = await read_answer(reader)
    writer.close()
    await asyncio.sleep(0.2)
    assert body == b"up"
    for head in up.requests:
        assert b"authorization: bearer " in head.lower(), f"sent without a token: {head!r}"
    assert up.paths == ["/up"], "the app's body reached the upstream as a request of its own"
    assert up.bodies == [smuggled]


async def test_a_smuggled_answer_is_not_given_to_the_next_app(
    proxy: Sidecar, up: ScriptedUpstream
) -> None:
    up.answers["/up"] = ok(b"up")
    up.answers["/victim"] = ok(b"victim")
    up.answers["/smuggled"] = ok(b"smuggled")
    up.delay["/smuggled"] = 0.5
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"
    attacker_r, attacker_w = await _open(proxy)
    attacker_w.write(_post(b"/up", smuggled, b"Connection: Content-Length"))
    await read_answer(attacker_r)
    attacker_w.close()
    # Another app, on its own connection: the sidecar reuses the pooled upstream connection.
    victim_r, victim_w = await _open(proxy)
    victim_w.write(GET % b"victim")
    _, body = await read_answer(victim_r)
    victim_w.close()
    assert body == b"victim"


async def test_upstream_listing_content_length_in_connection_still_frames_the_answer(
    proxy: Sidecar, up: ScriptedUpstream
) -> None:
    up.answers["/u"] = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Content-Length"
                        b"\r\n\r\nhello")
    up.answers["/next"] = ok(b"next")
    reader, writer = await _open(proxy)
    writer.write(GET % b"u")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    lower = head.lower()
    framed = (b"content-length: 5\r\n" in lower or b"transfer-encoding: chunked" in lower
              or b"connection: close" in lower)
    assert framed, head


# -- pipelining ------------------------------------------------------------------------------


async def test_a_malformed_pipelined_request_does_not_answer_for_the_valid_one_before_it(
    proxy: Sidecar, up: ScriptedUpstream
) -> None:
    up.answers["/p1"] = ok(b"p1")
    reader, writer = await _open(proxy)
    writer.write(GET % b"p1" + b"BOGUS LINE\r\n\r\n")  # one segment: both parsed in one read
    head, body = await read_answer(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 "), head + body
    assert body == b"p1"


async def test_pipelined_requests_before_a_half_close_are_all_answered(
    proxy: Sidecar, up: ScriptedUpstream
) -> None:
    for name in ("a", "b"):
        up.answers[f"/{name}"] = ok(name.encode())
    up.delay["/a"] = 0.2
    reader, writer = await _open(proxy)
    writer.write(GET % b"a" + GET % b"b")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write_eof()  # the app is done sending, and waits for both answers
    answers = []
    with contextlib.suppress(asyncio.IncompleteReadError):
        for _ in range(2):
            answers.append((await read_answer(reader))[1])
    writer.close()
    assert answers == [b"a", b"b"]


# -- truncated answers -------------------------------------------------------------------------


async def test_an_answer_cut_mid_body_does_not_look_complete_to_an_http10_app(
    proxy: Sidecar, up: ScriptedUpstream
) -> None:
    # A chunked answer that breaks off after its first chunk (no last chunk, then a close).
    up.answers["/cut"] = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3e8\r\n" + b"x" * 1000 + b"\r\n")
    up.close_after.add("/cut")
    reader, writer = await _open(proxy)
    writer.write(b"GET http://api.moex.com/cut HTTP/1.0\r\nHost: api.moex.com\r\n\r\n")
    try:
        data = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return  # the app can tell the answer is broken
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length" not in head.lower()  # so only the close can tell the end
    pytest.fail(f"a cut answer ended with a clean close after {len(body)} body bytes")


# -- back-pressure -----------------------------------------------------------------------------


def _queued(sidecar: Sidecar) -> int:
    """Request body bytes the proxy holds in its queues, over all app connections."""
    server = sidecar._server
    assert server is not None
    total = 0
    for conn in server.connections:
        for request in (conn._current, conn._receiving, *conn._pending):
            if request is not None:
                total += request.content._size
    return total


async def test_a_waiting_pipelined_upload_stays_bounded(
    make_sidecar: Any, up: ScriptedUpstream
) -> None:
    sidecar: Sidecar = await make_sidecar({
        "target": f"https://127.0.0.1:{up.port}",
        "rate_limit": {"rps": 0.5, "burst": 1, "max_wait": 10},
    })
    up.answers["/a"] = ok(b"a")
    up.delay["/a"] = 0.5
    up.answers["/up"] = ok(b"up")
    size = 48 * 1024 * 1024
    reader, writer = await _open(sidecar)
    writer.write(GET % b"a" + _post_head(b"/up", size))

    async def upload() -> None:
        block = b"u" * (1024 * 1024)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    sender = asyncio.create_task(upload())
    _, body = await read_answer(reader)  # /a, after 0.5 s; /up waits for its slot
    assert body == b"a"
    most = 0
    for _ in range(10):  # /up still waits for the rate limiter for about 1.5 s
        await asyncio.sleep(0.1)
        most = max(most, _queued(sidecar))
    sender.cancel()
    writer.close()
    assert most < 4 * 1024 * 1024, f"{most} bytes of one upload held in memory"


async def test_a_lone_upload_waiting_for_its_slot_stays_bounded(
    make_sidecar: Any, up: ScriptedUpstream
) -> None:
    """The same wait without a pipelined request ahead: the body queue keeps the app paused."""
    sidecar: Sidecar = await make_sidecar({
        "target": f"https://127.0.0.1:{up.port}",
        "rate_limit": {"rps": 0.5, "burst": 1, "max_wait": 10},
    })
    up.answers["/a"] = ok(b"a")
    up.answers["/up"] = ok(b"up")
    _, body = await answer_of(sidecar.proxy_port, GET % b"a")  # takes the only slot
    assert body == b"a"
    size = 48 * 1024 * 1024
    _, writer = await _open(sidecar)
    writer.write(_post_head(b"/up", size))

    async def upload() -> None:
        block = b"u" * (1024 * 1024)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    sender = asyncio.create_task(upload())
    most = 0
    for _ in range(10):
        await asyncio.sleep(0.1)
        most = max(most, _queued(sidecar))
    sender.cancel()
    writer.close()
    assert 0 < most < 4 * 1024 * 1024


async def test_requests_parsed_ahead_stay_within_the_pipelining_limit(
    proxy: Sidecar, up: ScriptedUpstream
) -> None:
    from sidecar.http1.server_connection import MAX_PARSED_AHEAD

    up.answers["/k"] = ok(b"k")
    reader, writer = await _open(proxy)
    batch = (GET % b"k") * 2000

    async def drain_answers() -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    answers = asyncio.create_task(drain_answers())
    most = 0
    for _ in range(5):
        try:
            writer.write(batch)
            await writer.drain()
        except ConnectionError:
            break  # past the cap the sidecar answers what it parsed and closes
        for _ in range(5):
            await asyncio.sleep(0.02)
            server = proxy._server
            assert server is not None
            most = max([most, *(len(c._pending) for c in server.connections)])
    answers.cancel()
    writer.close()
    # Reading stops at MAX_PIPELINED waiting; what one read already holds is parsed up to
    # MAX_PARSED_AHEAD, the rest is dropped with the connection (the app resends it).
    assert most <= MAX_PARSED_AHEAD, f"{most} requests parsed ahead on one connection"


# -- response framing from the upstream ------------------------------------------------------


async def test_an_answer_with_a_non_chunked_transfer_coding_ends_at_the_close(
    proxy: Sidecar, up: ScriptedUpstream
) -> None:
    up.answers["/gz"] = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n"
                         b"not really gzip")
    up.close_after.add("/gz")
    reader, writer = await _open(proxy)
    writer.write(GET % b"gz")
    try:
        head, body = await read_answer(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"not really gzip"


# -- error mapping ---------------------------------------------------------------------------


async def test_a_configured_header_outside_latin1_does_not_fail_every_request(
    make_sidecar: Any, up: ScriptedUpstream
) -> None:
    sidecar: Sidecar = await make_sidecar({
        "target": f"https://127.0.0.1:{up.port}",
        "headers": {"X-Client-Name": "Касса №1"},
    })
    up.answers["/h"] = ok(b"h")
    head, body = await answer_of(sidecar.proxy_port, GET % b"h")
    assert not head.startswith(b"HTTP/1.1 500 "), body
    if not head.startswith(b"HTTP/1.1 200 "):  # refused: then the app learns where and why
        assert b'"upstream": "moex-ntb"' in body


# -- a body left unread must not stall the connection --------------------------------------


@pytest.mark.parametrize("size", [300_000, 262_200, 1_000_000])
async def test_an_early_answer_to_an_upload_does_not_stall_the_next_request(
    proxy: Sidecar, up: ScriptedUpstream, size: int
) -> None:
    """The upstream answers before reading the upload, whose last bytes filled the body
    queue past its high-water mark: that pause ends with the exchange, and the next request
    on the connection is read at once (not after listen.idle_timeout)."""
    up.answers["/early"] = ok(b"early", b"Connection: close")  # as servers do when they
    up.early.add("/early")  # answer before reading the body
    up.answers["/next"] = ok(b"next")
    reader, writer = await _open(proxy)
    writer.write(b"POST http://api.moex.com/early HTTP/1.1\r\nHost: api.moex.com\r\n"
                 b"Content-Length: %d\r\n\r\n%b" % (size, b"u" * size))
    await writer.drain()
    head, body = await read_answer(reader)
    assert body == b"early"
    if b"connection: close" not in head.lower():  # kept alive: the next request must flow
        writer.write(GET % b"next")
        await writer.drain()
        _, body = await read_answer(reader)  # within 5 s; the idle timeout is 75 s
        assert body == b"next", body
    writer.close()
