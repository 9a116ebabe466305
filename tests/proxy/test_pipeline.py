"""The steps of one proxied request, seen from a scripted upstream: each answer the exchange
receives is closed once it is done with (the replaced 401 and 429 answers included), so no
upstream connection is ever left lent out; a clean answer's connection is reused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.scripted import read_body, start_upstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
DENIED = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied"
BUSY = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 4\r\n\r\nbusy"


class Upstream:
    """Answers in turn from ``script`` (then 200), noting each request's Authorization."""

    def __init__(self, script: list[bytes]) -> None:
        self.script = script
        self.tokens: list[str] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await read_body(reader, head)
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("authorization:"):
                        self.tokens.append(line.split(":", 1)[1].strip())
                writer.write(self.script.pop(0) if self.script else OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted(sandbox: SandboxStack) -> AsyncIterator[Callable[[list[bytes]], Any]]:
    servers: list[asyncio.Server] = []

    async def start(script: list[bytes]) -> tuple[Upstream, int]:
        upstream = Upstream(script)
        server = await start_upstream(sandbox, upstream.handle, "scripted")
        servers.append(server)
        return upstream, server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)


async def _call(sidecar: Sidecar, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    writer.close()
    return head.split(b"\r\n", 1)[0] + b" " + body


GET = b"GET http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"
POST = (b"POST http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n"
        b"Content-Length: 4\r\n\r\nbody")


async def test_a_rejected_token_is_replayed_and_the_401_answer_is_not_left_open(
    make_sidecar: Any, scripted: Any
) -> None:
    upstream, port = await scripted([DENIED])
    sidecar: Sidecar = await make_sidecar({"target": f"https://127.0.0.1:{port}"})
    assert await _call(sidecar, POST) == b"HTTP/1.1 200 OK ok"
    runtime = sidecar.upstreams["moex-ntb"]
    assert len(upstream.tokens) == 2 and upstream.tokens[0] != upstream.tokens[1]
    assert runtime.client.in_use == 0
    assert runtime.inflight.count == 0


async def test_a_429_retried_closes_the_first_answer(make_sidecar: Any, scripted: Any) -> None:
    upstream, port = await scripted([BUSY])
    sidecar: Sidecar = await make_sidecar(
        {"target": f"https://127.0.0.1:{port}", "retry_on_429": True}
    )
    assert await _call(sidecar, GET) == b"HTTP/1.1 200 OK ok"
    runtime = sidecar.upstreams["moex-ntb"]
    assert len(upstream.tokens) == 2
    assert runtime.client.in_use == 0


async def test_clean_answers_reuse_one_upstream_connection(
    make_sidecar: Any, scripted: Any
) -> None:
    upstream, port = await scripted([])
    sidecar: Sidecar = await make_sidecar({"target": f"https://127.0.0.1:{port}"})
    for request in (GET, POST, GET):
        assert await _call(sidecar, request) == b"HTTP/1.1 200 OK ok"
    assert upstream.connections == 1
    assert sidecar.upstreams["moex-ntb"].client.idle == 1


async def test_a_refusal_before_sending_touches_no_connection(
    make_sidecar: Any, scripted: Any
) -> None:
    upstream, port = await scripted([])
    sidecar: Sidecar = await make_sidecar(
        {"target": f"https://127.0.0.1:{port}", "max_body": 2}
    )
    answer = await _call(sidecar, POST)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"error": "body_too_large"' in answer
    assert upstream.connections == 0
