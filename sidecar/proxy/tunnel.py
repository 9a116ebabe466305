"""``CONNECT`` tunnels to the hosts listed in ``passthrough``: bytes both ways, untouched."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from sidecar.proxy.errors import error_response

log = structlog.get_logger("sidecar.proxy")

_HIGH_WATER = 256 * 1024


class _ToRemote:
    """Takes the app's bytes from aiohttp's protocol (as its payload parser) to the remote."""

    def __init__(self, writer: asyncio.StreamWriter, client: asyncio.Transport) -> None:
        self._writer = writer
        self._client = client
        self.closed = asyncio.Event()
        self._resuming = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._writer.write(data)
        transport = self._writer.transport
        if transport.get_write_buffer_size() > _HIGH_WATER and not self._resuming:
            # The remote is slower than the app: stop reading the app until it drains.
            self._client.pause_reading()
            self._resuming = True
            asyncio.get_running_loop().create_task(self._resume())
        return False, b""

    async def _resume(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()
        self._resuming = False
        with contextlib.suppress(RuntimeError, AttributeError):
            self._client.resume_reading()

    def feed_eof(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if self._writer.can_write_eof():
                self._writer.write_eof()
        self.closed.set()


async def tunnel(
    request: web.BaseRequest, host: str, port: int, connect_timeout: float
) -> web.StreamResponse:
    client = request.transport
    if client is None:
        return web.Response(status=499)
    try:
        connecting = asyncio.open_connection(host, port)
        reader, writer = await asyncio.wait_for(connecting, connect_timeout)
    except TimeoutError:
        return error_response(504, "tunnel_timeout", f"connecting to {host}:{port} timed out")
    except OSError as exc:
        return error_response(
            502, "tunnel_unreachable", f"cannot connect to {host}:{port}: {exc.strerror or exc}"
        )
    log.info("tunnel_open", host=host, port=port)
    client.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    to_remote = _ToRemote(writer, client)
    protocol = request.protocol
    protocol.set_parser(to_remote)  # from now on the app's bytes go to the remote

    def half_close() -> bool:
        # The app finished sending: pass the EOF on and keep its side open for the answer
        # (aiohttp would otherwise close the connection and cancel this handler).
        to_remote.feed_eof()
        return True

    if hasattr(protocol, "on_eof"):  # the listener's ConnectionProtocol
        protocol.on_eof = half_close
    # Relay in its own task: the handler may be cancelled when the app goes away, and the
    # relay must then still close the remote side cleanly.
    relay = asyncio.get_running_loop().create_task(_relay_back(reader, writer, request))
    try:
        sent_back = await asyncio.shield(relay)
    except asyncio.CancelledError:
        relay.cancel()
        raise
    log.info("tunnel_closed", host=host, port=port, bytes_to_app=sent_back)
    # The connection is gone; aiohttp's attempt to send this is absorbed as a closed connection.
    return web.Response(status=200)


async def _relay_back(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: web.BaseRequest
) -> int:
    """Remote → app until the remote closes; then both sides are closed."""
    client = request.transport
    sent_back = 0
    try:
        while chunk := await reader.read(65536):
            if client is None or client.is_closing():
                break
            client.write(chunk)
            sent_back += len(chunk)
            await request.writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        if client is not None:
            client.close()
    return sent_back
