"""The proxy listener alone, with no upstream and no sandbox behind it (what it refuses and
tunnels needs neither), and raw exchanges with a listening port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sidecar.metrics import Metrics
from sidecar.proxy.listener import ProxyHandler, start_listener


@dataclass
class Listening:
    port: int
    handler: ProxyHandler
    metrics: Metrics

    def rejections(self, upstream: str, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "sidecar_local_rejections_total", {"upstream": upstream, "reason": reason})
        return value or 0.0


@asynccontextmanager
async def bare_listener(passthrough: Sequence[str] = ()) -> AsyncIterator[Listening]:
    """A proxy listener on an ephemeral port that knows no upstream."""
    metrics = Metrics()
    handler = ProxyHandler({}, list(passthrough), metrics)
    listener, server = await start_listener(handler, "127.0.0.1", 0)
    try:
        yield Listening(listener.sockets[0].getsockname()[1], handler, metrics)
    finally:
        listener.close()
        await server.shutdown(1.0)


async def one_answer(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Send ``data``; return the head and body of the first answer (it must carry a length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            return head, await reader.readexactly(length)
    finally:
        writer.close()
