"""Scripted TLS upstreams the wire and proxy tests answer from, the raw-socket reader of the
sidecar's answers, and the exact bytes they exchange: a proxy-form GET to the MOEX upstream
and a sized 200 answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import SandboxStack

Handle = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Writer = Callable[[asyncio.StreamWriter], Awaitable[None]]  # writes an answer itself

# A request from the app, in proxy form; ``GET % b"path"`` names the path.
GET = b"GET http://api.moex.com/%b HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"


def ok(body: bytes, *extra: bytes) -> bytes:
    """A 200 answer with a Content-Length, ``extra`` header lines and ``body``."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (
        len(body), b"".join(h + b"\r\n" for h in extra), body)


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body after a request head: chunked, sized, or none."""
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                return body[:-2]
            body = body[:-2]
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


async def serve_tls(
    pki: Pki, handle: Handle, name: str, sock: socket.socket | None = None
) -> asyncio.Server:
    """A TLS server (a certificate from ``pki``) on an ephemeral port of 127.0.0.1, or on
    ``sock``; like the NTB API it stands for, it asks no client certificate."""
    ctx = pki.server_ssl_context(pki.issue_server(name, ["127.0.0.1"]))
    if sock is not None:
        return await asyncio.start_server(handle, sock=sock, ssl=ctx)
    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


async def start_upstream(sandbox: SandboxStack, handle: Handle, name: str) -> asyncio.Server:
    """A TLS server (sandbox CA) on an ephemeral port, asking no client certificate."""
    return await serve_tls(sandbox.pki, handle, name)


@dataclass
class ScriptedUpstream:
    """An upstream answering each request from a script, one at a time per connection, and
    noting what it received. Each option is explained where it is declared; a path is as in
    the request line."""

    answers: dict[str, bytes | Writer] = field(default_factory=dict)  # by path
    turns: list[bytes] = field(default_factory=list)  # answered in order, before ``answers``
    default: bytes | None = None  # for an unscripted path; None: hang up unanswered
    delay: dict[str, float] = field(default_factory=dict)  # seconds to wait before answering
    close_after: set[str] = field(default_factory=set)  # close the connection after answering
    silent: set[str] = field(default_factory=set)  # never answer; wait for the sidecar to go
    early: set[str] = field(default_factory=set)  # answer without reading the body, then hold
    requests: list[bytes] = field(default_factory=list)  # each request's head, as received
    bodies: list[bytes] = field(default_factory=list)  # each body read (none for ``early``)
    connections: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def paths(self) -> list[str]:
        return [_path(head) for head in self.requests]

    @property
    def tokens(self) -> list[str]:
        """The Authorization value of each request that had one."""
        return [line.split(":", 1)[1].strip()
                for head in self.requests for line in head.decode("latin-1").split("\r\n")
                if line.lower().startswith("authorization:")]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                path = _path(head)
                if path not in self.early:
                    self.bodies.append(await read_body(reader, head))
                if path in self.silent:
                    await reader.read()
                    return
                if path in self.delay:
                    await asyncio.sleep(self.delay[path])
                answer = self.turns.pop(0) if self.turns else self.answers.get(path, self.default)
                if answer is None:
                    return
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                else:
                    await answer(writer)
                if path in self.close_after:
                    return
                if path in self.early:
                    await asyncio.sleep(30)  # keep the connection, never read the body
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()


def _path(head: bytes) -> str:
    return head.split(b" ", 2)[1].decode()


UpstreamT = TypeVar("UpstreamT", bound=ScriptedUpstream)


class ScriptedServers:
    """Serves scripted upstreams over TLS (certificates from ``pki``); ``async with`` stops
    every one it started."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.servers: list[asyncio.Server] = []

    async def start(
        self, upstream: UpstreamT, name: str = "scripted", sock: socket.socket | None = None
    ) -> UpstreamT:
        """``upstream`` served on a port of its own (or on ``sock``), its ``port`` set."""
        server = await serve_tls(self.pki, upstream.handle, name, sock)
        self.servers.append(server)
        upstream.port = server.sockets[0].getsockname()[1]
        return upstream

    async def __aenter__(self) -> ScriptedServers:
        return self

    async def __aexit__(self, *_: object) -> None:
        for server in self.servers:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)


async def read_answer(reader: asyncio.StreamReader, wait: float = 5.0) -> tuple[bytes, bytes]:
    """One answer framed by Content-Length or chunked; (head, body). Each read waits at most
    ``wait`` seconds."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), wait)).strip(), 16)
            body += (await asyncio.wait_for(reader.readexactly(size + 2), wait))[:-2]
            if size == 0:
                return head, body
    length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await asyncio.wait_for(reader.readexactly(length), wait)


async def answer_of(port: int, request: bytes, wait: float = 5.0) -> tuple[bytes, bytes]:
    """``request`` sent on a new connection to ``port`` of 127.0.0.1; (head, body) of the
    answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_answer(reader, wait)
    finally:
        writer.close()
