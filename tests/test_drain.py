"""A graceful stop loses no app request: from the start of the drain every answer says
``Connection: close``, so no app holds an idle keep-alive connection that the stop would cut.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.app import Sidecar

POST = (b"POST http://api.moex.com/ntb/echo HTTP/1.1\r\nHost: api.moex.com\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


async def test_keep_alive_posts_through_a_drain_lose_no_request(make_sidecar: Any) -> None:
    sidecar: Sidecar = await make_sidecar(shutdown={"delay": 1.0, "grace": 5.0})
    seen = {"answered": 0, "lost": 0, "refused": 0, "closed_during_drain": 0}

    async def app() -> None:
        """Posts back to back, reusing its connection unless told to close, until the sidecar
        stops accepting. A request written but never answered is lost."""
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        while True:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1",
                                                                   sidecar.proxy_port)
                except OSError:
                    seen["refused"] += 1  # nothing was sent: the app can go elsewhere
                    return
            assert reader is not None
            try:
                writer.write(POST)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), 5)
            except (asyncio.IncompleteReadError, ConnectionError):
                seen["lost"] += 1
                writer.close()
                writer = None
                continue
            seen["answered"] += 1
            if b"connection: close" in head.lower():
                if sidecar.draining:
                    seen["closed_during_drain"] += 1
                writer.close()
                writer = None

    task = asyncio.create_task(app())
    await asyncio.sleep(0.3)
    await sidecar.drain()
    await asyncio.wait_for(task, 10)
    assert seen["lost"] == 0, seen
    assert seen["answered"] > 10 and seen["closed_during_drain"] > 1, seen
