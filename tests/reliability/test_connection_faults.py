"""Faults on either side of the sidecar: an upstream that resets, an app that hangs up
mid-upload, and a thousand idle app connections held open while traffic flows."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url

NTB = "http://api.moex.com/ntb"


class ResettingApi:
    """Plain-HTTP upstream: resets before answering, or mid-body after promising 1 MB."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if self.mode == "mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.transport.abort()  # RST, not a clean close

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("mode", ["before-answer", "mid-body"])
async def test_upstream_reset(make_sidecar: SidecarFactory, mode: str) -> None:
    api = ResettingApi(mode)
    port = await api.start()
    try:
        sidecar = await make_sidecar({"target": f"http://127.0.0.1:{port}"})
        async with aiohttp.ClientSession() as session:
            if mode == "before-answer":
                async with session.get(f"{NTB}/x", proxy=proxy_url(sidecar)) as resp:
                    body = await resp.json()
                assert resp.status == 502 and body["upstream"] == "moex-ntb"
                assert body["error"] == "upstream_error"
            else:
                # The app must see a broken response, never a short one that looks complete.
                with pytest.raises(aiohttp.ClientPayloadError):
                    async with session.get(f"{NTB}/x", proxy=proxy_url(sidecar)) as resp:
                        assert resp.status == 200
                        await resp.read()
    finally:
        assert api.server is not None
        api.server.close()


async def test_app_hanging_up_mid_upload_aborts_the_upstream_request(
    sandbox: SandboxStack, sidecar: Sidecar
) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(b"POST http://api.moex.com/ntb/upload HTTP/1.1\r\nHost: api.moex.com\r\n"
                 b"Content-Length: 50000000\r\n\r\n" + os.urandom(2_000_000))
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.transport.abort()  # 48 MB never come
    upstream = sidecar.upstreams["moex-ntb"]
    for _ in range(50):
        if upstream.inflight.count == 0 and upstream.client.in_use == 0:
            break
        await asyncio.sleep(0.1)
    assert upstream.inflight.count == 0 and upstream.client.in_use == 0
    # The API started reading, and its request was cut: it never got a body it took for whole.
    assert sandbox.ntb.stats()["last_request"] is None
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{NTB}/after", data=b"ok", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 200


async def test_a_thousand_idle_keepalive_connections_while_traffic_flows(
    sidecar: Sidecar,
) -> None:
    idle: list[asyncio.StreamWriter] = []
    try:
        for _ in range(1000):
            _, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
            idle.append(writer)
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                async with session.get(f"{NTB}/busy/{i}", proxy=proxy_url(sidecar)) as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(one(i) for i in range(200)))
        assert statuses == [200] * 200
        assert all(not w.is_closing() for w in idle)  # the idle ones are still held open
    finally:
        for writer in idle:
            writer.close()


async def test_slow_headers_are_cut_off_and_others_are_served(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = await make_sidecar(listen={"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0",
                                         "idle_timeout": 1.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def trickle() -> float:
        for byte in b"GET http://api.moex.com/ntb/slow HTTP/1.1\r\nHost: api.moex.com\r\nX-A: ":
            if reader.at_eof() or writer.is_closing():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.2)
            if await _closed(reader):
                break
        return loop.time() - started

    slow = asyncio.create_task(trickle())
    async with aiohttp.ClientSession() as session:
        for _ in range(5):  # meanwhile the others are served as usual
            async with session.get(f"{NTB}/fast", proxy=proxy_url(sidecar)) as resp:
                assert resp.status == 200
            await asyncio.sleep(0.2)
    cut_after = await asyncio.wait_for(slow, 10)
    writer.close()
    assert 1.3 < cut_after < 4, cut_after


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.01) == b""
    except TimeoutError:
        return False
