"""``CONNECT`` tunnels to the hosts listed in ``passthrough``: bytes both ways, untouched."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from sidecar.http1.request import ServerRequest
from sidecar.proxy.errors import error_response

log = structlog.get_logger("sidecar.proxy")

_HIGH_WATER = 256 * 1024


class _ToRemote:
    """Takes the app's bytes from the connection (once it has handed over) to the remote."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._client: asyncio.Transport | None = None
        self._resuming = False

    def attach(self, client: asyncio.Transport) -> None:
        self._client = client

    def feed_data(self, data: bytes) -> None:
        self._writer.write(data)
        transport = self._writer.transport
        if (
            transport.get_write_buffer_size() > _HIGH_WATER
            and not self._resuming
            and self._client is not None
        ):
            # The remote is slower than the app: stop reading the app until it drains.
            self._client.pause_reading()
            self._resuming = True
            asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()
        self._resuming = False
        with contextlib.suppress(RuntimeError, AttributeError):
            if self._client is not None and not self._client.is_closing():
                self._client.resume_reading()

    def feed_eof(self) -> None:
        # The app finished sending: pass the EOF on and keep its side open for the answer.
        with contextlib.suppress(OSError, RuntimeError):
            if not self._writer.is_closing() and self._writer.can_write_eof():
                self._writer.write_eof()


async def tunnel(request: ServerRequest, host: str, port: int, connect_timeout: float) -> None:
    try:
        connecting = asyncio.open_connection(host, port)
        reader, writer = await asyncio.wait_for(connecting, connect_timeout)
    except TimeoutError:
        await error_response(
            504, "tunnel_timeout", f"connecting to {host}:{port} timed out").send(request)
        return
    except OSError as exc:
        await error_response(
            502, "tunnel_unreachable", f"cannot connect to {host}:{port}: {exc.strerror or exc}"
        ).send(request)
        return
    log.info("tunnel_open", host=host, port=port)
    to_remote = _ToRemote(writer)
    client = request.take_over(to_remote)
    to_remote.attach(client)
    client.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    request.status = 200
    sent_back = 0
    try:
        while chunk := await reader.read(65536):
            if client.is_closing():
                break
            client.write(chunk)
            sent_back += len(chunk)
            await request.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        client.close()
        request.finished = True
    log.info("tunnel_closed", host=host, port=port, bytes_to_app=sent_back)
