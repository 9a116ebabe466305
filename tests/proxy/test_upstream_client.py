"""The upstream client: a response gives its connection back when closed (kept only when read
to its end), and transport failures come back as the status and code the app should see."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict

from sidecar.config.sections import Timeouts
from sidecar.proxy.upstream_client import UpstreamClient, UpstreamFailure
from sidecar.sandbox.pki import Pki

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class Counting:
    """A plain HTTP server answering every request with ``answer``; counts connections."""

    def __init__(self, answer: bytes = OK) -> None:
        self.answer = answer
        self.connections = 0
        self.closed = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    started: list[asyncio.Server] = []
    yield started
    for server in started:
        server.close()


async def _serve(servers: list[asyncio.Server], counting: Counting,
                 ctx: ssl.SSLContext | None = None) -> int:
    server = await asyncio.start_server(counting.handle, "127.0.0.1", 0, ssl=ctx)
    servers.append(server)
    return int(server.sockets[0].getsockname()[1])


def _client(read: float = 5.0) -> UpstreamClient:
    return UpstreamClient(ssl.create_default_context(), Timeouts(connect=2, read=read))


async def test_a_response_read_to_its_end_gives_its_connection_back_for_reuse(
    servers: list[asyncio.Server],
) -> None:
    counting = Counting()
    port = await _serve(servers, counting)
    client = _client()
    for _ in range(3):
        resp = await client.send("GET", f"http://127.0.0.1:{port}/x", CIMultiDict(), None)
        assert await resp.read(100) == b"hello"
        assert await resp.readany() == b""
        resp.close()
        resp.close()  # a second close changes nothing
        assert (client.in_use, client.idle) == (0, 1)
    assert counting.connections == 1
    await client.close()


async def test_a_response_closed_unread_closes_its_connection(
    servers: list[asyncio.Server],
) -> None:
    big = b"x" * 1_000_000
    counting = Counting(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(big), big))
    port = await _serve(servers, counting)
    client = _client()
    resp = await client.send("GET", f"http://127.0.0.1:{port}/", CIMultiDict(), None)
    assert resp.status == 200
    resp.close()
    assert (client.in_use, client.idle) == (0, 0)
    for _ in range(50):
        if counting.closed:
            break
        await asyncio.sleep(0.02)
    assert counting.closed == 1  # the server saw the connection go: nothing half-read is kept
    resp2 = await client.send("GET", f"http://127.0.0.1:{port}/", CIMultiDict(), None)
    resp2.close()
    assert counting.connections == 2
    await client.close()


async def test_an_unreachable_target_is_a_502_naming_it() -> None:
    client = _client()
    with pytest.raises(UpstreamFailure) as failed:
        await client.send("GET", "http://127.0.0.1:9/", CIMultiDict(), None)
    assert (failed.value.status, failed.value.error) == (502, "upstream_unreachable")
    assert failed.value.reason == "cannot connect to 127.0.0.1:9 (Connection refused)"
    assert client.in_use == 0


async def test_a_silent_target_is_a_504(servers: list[asyncio.Server]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    servers.append(server)
    port = server.sockets[0].getsockname()[1]
    client = _client(read=0.3)
    with pytest.raises(UpstreamFailure) as failed:
        await client.send("GET", f"http://127.0.0.1:{port}/", CIMultiDict(), None)
    assert (failed.value.status, failed.value.error) == (504, "upstream_timeout")
    assert "no answer within 0.3 s" in failed.value.reason
    assert client.in_use == 0


async def test_an_untrusted_certificate_is_a_502_tls_error(
    servers: list[asyncio.Server], tmp_path: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    pki = Pki(tmp_path / "pki")
    port = await _serve(
        servers, Counting(), pki.server_ssl_context(pki.issue_server("api", ["127.0.0.1"]))
    )
    client = _client()  # the system trust store: the sandbox CA is not in it
    with pytest.raises(UpstreamFailure) as failed:
        await client.send("GET", f"https://127.0.0.1:{port}/", CIMultiDict(), None)
    assert (failed.value.status, failed.value.error) == (502, "upstream_tls")
    assert f"TLS certificate of 127.0.0.1:{port} failed verification" in failed.value.reason


async def test_requests_beyond_max_connections_wait_for_one_to_come_free(
    servers: list[asyncio.Server],
) -> None:
    counting = Counting()
    port = await _serve(servers, counting)
    client = UpstreamClient(ssl.create_default_context(), Timeouts(connect=2, read=5), 2)
    url = f"http://127.0.0.1:{port}/"
    first = await client.send("GET", url, CIMultiDict(), None)
    second = await client.send("GET", url, CIMultiDict(), None)
    third = asyncio.create_task(client.send("GET", url, CIMultiDict(), None))
    await asyncio.sleep(0.2)
    assert not third.done()  # two connections at most: the third request waits
    assert await first.read(10) == b"hello" and await first.readany() == b""
    first.close()
    resp = await asyncio.wait_for(third, 2)
    assert resp.status == 200
    assert counting.connections == 2  # it took the connection the first one gave back
    resp.close()
    second.close()
    await client.close()


async def test_a_request_that_waits_past_the_connect_timeout_for_room_is_a_503(
    servers: list[asyncio.Server],
) -> None:
    port = await _serve(servers, Counting())
    client = UpstreamClient(ssl.create_default_context(), Timeouts(connect=0.3, read=5), 1)
    url = f"http://127.0.0.1:{port}/"
    held = await client.send("GET", url, CIMultiDict(), None)
    with pytest.raises(UpstreamFailure) as failed:
        await client.send("GET", url, CIMultiDict(), None)
    assert (failed.value.status, failed.value.error) == (503, "upstream_busy")
    assert "all 1 connections busy" in failed.value.reason
    held.close()
    await client.close()
