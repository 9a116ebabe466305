"""Pieces of the scripted TLS upstreams the wire tests answer from, and the exact bytes
they exchange: a proxy-form GET to the MOEX upstream and a sized 200 answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sidecar.sandbox.servers import SandboxStack

Handle = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

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


async def start_upstream(sandbox: SandboxStack, handle: Handle, name: str) -> asyncio.Server:
    """A TLS server (sandbox CA) on an ephemeral port; like the NTB API it stands for, it
    asks no client certificate."""
    cert = sandbox.pki.issue_server(name, ["127.0.0.1"])
    ctx = sandbox.pki.server_ssl_context(cert)
    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
