"""Serving a CONNECT tunnel to a matched host here instead of tunnelling it: answer 200,
look at the app's first byte, then terminate TLS with the host's leaf (0x16: a ClientHello)
or read plain HTTP (undici sends ``CONNECT host:80`` for http:// URLs too). Either way the
socket goes to a successor connection of the same HTTP server, bound to one handler."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Callable

from sidecar.http1.handover import adopt
from sidecar.http1.request import Handler, ServerRequest

TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello


async def peek_first_byte(transport: asyncio.Transport, timeout: float) -> bytes:
    """The socket's next byte, left in the socket (MSG_PEEK) for the TLS layer to read;
    b"" when the app closes or sends nothing for ``timeout``.

    The transport owns the descriptor (and is paused): a duplicate is watched instead."""
    sock = transport.get_extra_info("socket")
    loop = asyncio.get_running_loop()
    peek = socket.socket(fileno=os.dup(sock.fileno()))
    peek.setblocking(False)
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(peek.fileno(), readable)
    try:
        await asyncio.wait_for(ready, timeout)
        return peek.recv(1, socket.MSG_PEEK)
    except (TimeoutError, OSError):
        return b""
    finally:
        loop.remove_reader(peek.fileno())
        peek.close()


async def serve_tunnel(
    request: ServerRequest,
    handler_for: Callable[[bool], Handler],
    tls_context: Callable[[], ssl.SSLContext],
    on_handshake_failed: Callable[[str], None],
    timeout: float,
) -> str:
    """Answer the CONNECT and serve what comes inside; returns "tls", "plain" or why not."""
    conn = request.connection
    if conn.transport is None or conn.transport.is_closing():
        return "no_data"  # the app hung up right after its CONNECT
    transport, early = conn.hand_over()
    transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    request.status = 200
    request.finished = True
    first = early[:1] or await peek_first_byte(transport, timeout)
    if not first:
        transport.close()
        return "no_data"
    if first[0] != TLS_HANDSHAKE:
        adopt(conn.successor(handler_for(False)), transport, early)
        return "plain"
    if early:
        # A ClientHello sent before the 200 was read off the socket with the CONNECT head:
        # the TLS layer cannot get it back. No mainstream client does this.
        transport.close()
        on_handshake_failed("the app sent TLS before the CONNECT was answered")
        return "early_tls"
    successor = conn.successor(handler_for(True))
    loop = asyncio.get_running_loop()
    try:
        tls = await loop.start_tls(
            transport, successor, tls_context(), server_side=True,
            ssl_handshake_timeout=timeout,
        )
    except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
        with contextlib.suppress(Exception):
            transport.abort()
        on_handshake_failed(_reason(exc))
        return "handshake_failed"
    if tls is None:  # the app went away during the handshake
        return "handshake_failed"
    successor.connection_made(tls)
    return "tls"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    return type(exc).__name__
