"""TRACE is refused before routing: the upstream would echo the request back, with the
Authorization header the sidecar added (a bearer token in a response body)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.scripted import read_body, start_upstream


@pytest.fixture
async def echoed() -> list[bytes]:
    return []


@pytest.fixture
async def proxy(
    make_sidecar: Any, sandbox: SandboxStack, echoed: list[bytes]
) -> AsyncIterator[Sidecar]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # answers as a TRACE-enabled server does: the request as its body
                head = await reader.readuntil(b"\r\n\r\n")
                await read_body(reader, head)
                echoed.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(head), head))
                await writer.drain()
        writer.close()

    server = await start_upstream(sandbox, echo, "echo")
    port = server.sockets[0].getsockname()[1]
    yield await make_sidecar({"target": f"https://127.0.0.1:{port}"})
    server.close()


async def _send(sidecar: Sidecar, request: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return head, await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "request_line",
    [b"TRACE http://api.moex.com/v1/orders HTTP/1.1", b"TRACE /v1/orders HTTP/1.1",
     b"TRACE http://unknown.example/ HTTP/1.1"],
)
async def test_trace_is_refused_and_never_reaches_the_upstream(
    proxy: Sidecar, echoed: list[bytes], request_line: bytes
) -> None:
    head, body = await _send(proxy, request_line + b"\r\nHost: api.moex.com\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 "), head
    answer = json.loads(body)
    assert answer["error"] == "method_not_allowed" and "TRACE" in answer["message"]
    assert b"bearer" not in body.lower()
    assert echoed == []


async def test_other_methods_still_go(proxy: Sidecar, echoed: list[bytes]) -> None:
    head, _ = await _send(
        proxy, b"OPTIONS http://api.moex.com/v1/orders HTTP/1.1\r\nHost: api.moex.com\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and len(echoed) == 1
