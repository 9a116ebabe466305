"""The one-shot fetcher behind IdP and NCANode calls: whole answers (chunked included), the
1 MiB cap, no redirects followed, and each network failure as its own exception."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sidecar.http1.errors import CertificateRejected, ConnectFailed, TimedOut, TooLarge
from sidecar.http1.fetch import MAX_ANSWER, Fetcher
from sidecar.sandbox.pki import Pki

Answer = Callable[[bytes], bytes | None]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


async def serve(answer: Answer, ctx: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    """A server that reads one request (head and body) and writes ``answer(request)``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            request = head + await reader.readexactly(length)
            out = answer(request)
            if out is None:
                await asyncio.sleep(30)  # never answers
                return
            writer.write(out)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    started: list[asyncio.Server] = []
    yield started
    for server in started:
        server.close()


async def test_form_post_over_tls_and_a_chunked_answer_read_whole(
    pki: Pki, servers: list[asyncio.Server]
) -> None:
    seen: list[bytes] = []

    def answer(request: bytes) -> bytes:
        seen.append(request)
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
                b"3\r\n{\"a\r\n5\r\n\": 1}\r\n0\r\n\r\n")

    ctx = pki.server_ssl_context(pki.issue_server("idp", ["127.0.0.1"]))
    server, port = await serve(answer, ctx)
    servers.append(server)
    reply = await Fetcher(pki.client_ssl_context(), 5).request(
        "POST", f"https://127.0.0.1:{port}/token?x=1", form={"grant_type": "password", "p": "a b"}
    )
    assert (reply.status, reply.body, reply.headers["X-A"]) == (200, b'{"a": 1}', "1")
    request = seen[0]
    assert request.startswith(b"POST /token?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Type: application/x-www-form-urlencoded" in request
    assert b"Connection: close" in request
    assert request.endswith(b"\r\n\r\ngrant_type=password&p=a+b")


async def test_a_redirect_is_an_answer_not_followed(servers: list[asyncio.Server]) -> None:
    calls: list[bytes] = []

    def answer(request: bytes) -> bytes:
        calls.append(request)
        return (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/x\r\n"
                b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n")

    server, port = await serve(answer)
    servers.append(server)
    reply = await Fetcher(None, 5).request("GET", f"http://127.0.0.1:{port}/authenticate")
    assert reply.status == 302 and reply.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert len(calls) == 1


async def test_an_answer_over_the_cap_is_refused(servers: list[asyncio.Server]) -> None:
    big = b"x" * (MAX_ANSWER + 1)
    server, port = await serve(
        lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(big), big))
    servers.append(server)
    with pytest.raises(TooLarge):
        await Fetcher(None, 5).request("GET", f"http://127.0.0.1:{port}/")


async def test_failures_come_as_distinct_exceptions(
    pki: Pki, servers: list[asyncio.Server]
) -> None:
    silent, silent_port = await serve(lambda _: None)
    servers.append(silent)
    with pytest.raises(TimedOut) as silence:
        await Fetcher(None, 0.5).request("GET", f"http://127.0.0.1:{silent_port}/")
    assert isinstance(silence.value, TimeoutError)  # still a TimeoutError for plain callers
    assert silence.value.describe() == f"no answer within 0.5 s from 127.0.0.1:{silent_port}"

    with pytest.raises(ConnectFailed) as refused:
        await Fetcher(None, 5).request("GET", "http://127.0.0.1:9/")
    assert refused.value.describe() == "cannot connect to 127.0.0.1:9 (Connection refused)"

    other = Pki(pki.directory.parent / "other")  # a CA the client does not trust
    tls, tls_port = await serve(
        lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        other.server_ssl_context(other.issue_server("idp", ["127.0.0.1"])),
    )
    servers.append(tls)
    with pytest.raises(CertificateRejected) as untrusted:
        await Fetcher(pki.client_ssl_context(), 5).request("GET", f"https://127.0.0.1:{tls_port}/")
    assert "failed verification" in untrusted.value.describe()
