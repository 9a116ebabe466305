"""A chunked request's trailers count against the same 32 KiB as its head: an app streaming
trailers without end is refused (431, or the connection closes), and is not buffered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.scripted import read_body, start_upstream

FLOOD = 64 * 1024 * 1024
HEAD = (b"POST http://api.moex.com/orders HTTP/1.1\r\nHost: api.moex.com\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")


async def _answer_after_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        head = await reader.readuntil(b"\r\n\r\n")
        body = await read_body(reader, head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()
    writer.close()


@pytest.fixture
async def proxy(make_sidecar: Any, sandbox: SandboxStack) -> AsyncIterator[Sidecar]:
    server = await start_upstream(sandbox, _answer_after_body, "trailers")
    port = server.sockets[0].getsockname()[1]
    yield await make_sidecar({"target": f"https://127.0.0.1:{port}"})
    server.close()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.parametrize(
    "piece",
    [b"X-Trailer: " + b"t" * 100 + b"\r\n", b"t" * 4096],  # many lines; one endless line
    ids=["lines", "one-line"],
)
async def test_endless_request_trailers_are_refused(proxy: Sidecar, piece: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    before = _rss()
    sent = 0
    writer.write(HEAD + b"2\r\n{}\r\n0\r\n" + (b"X-Endless: " if piece[:1] == b"t" else b""))
    try:
        while sent < FLOOD:
            writer.write(piece * 64)
            await asyncio.wait_for(writer.drain(), 10)
            sent += len(piece) * 64
    except (ConnectionError, TimeoutError):
        pass
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
    except ConnectionError:  # reset, or our write found it closed
        answer = b""
    except TimeoutError:  # still waiting for the end of the trailers
        answer = None
    finally:
        writer.close()
    assert sent < FLOOD // 8, "the sidecar kept reading trailers"
    assert answer is not None
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    assert _rss() - before < 48 * 1024 * 1024


async def test_small_request_trailers_are_dropped_and_the_request_goes(proxy: Sidecar) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    try:
        writer.write(HEAD + b"2\r\n{}\r\n0\r\nX-Checksum: abc\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(1024), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n{}")
