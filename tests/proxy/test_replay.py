"""Replaying after a 401 never loses, duplicates or reorders body bytes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url


class EarlyRefusingApi:
    """Plain-HTTP upstream: the first request gets 401 headers after 64 KiB of body, and a 401
    body that ends only when the request body has ended; later requests are echoed."""

    def __init__(self, refuse_after: int) -> None:
        self.refuse_after = refuse_after
        self.seen: list[tuple[int, int]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not self.seen:
            await request.content.readexactly(self.refuse_after)
            resp = web.StreamResponse(status=401)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"token expired; ")
            got = self.refuse_after
            while chunk := await request.content.readany():
                got += len(chunk)
            self.seen.append((401, got))
            await resp.write(b"done")
            await resp.write_eof()
            return resp
        digest, length = hashlib.sha256(), 0
        while chunk := await request.content.readany():
            digest.update(chunk)
            length += len(chunk)
        self.seen.append((200, length))
        return web.json_response({"len": length, "sha256": digest.hexdigest()})

    async def start(self) -> int:
        low_level = web.Server(self.handle)
        self.server = await asyncio.get_running_loop().create_server(low_level, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("size", "refuse_after", "replayed"),
    [
        (300_000, 64 * 1024, True),
        (1_200_010, 64 * 1024, True),  # the unsent rest streams after the kept start
        (1_200_010, 1_100_000, False),  # over replay_limit already sent: not replayable
    ],
)
async def test_early_401_with_chunked_body_replays_whole_or_not_at_all(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, size: int, refuse_after: int,
    replayed: bool,
) -> None:
    api = EarlyRefusingApi(refuse_after)
    port = await api.start()
    try:
        sidecar = await make_sidecar({"target": f"http://127.0.0.1:{port}"})
        for _ in range(100):  # the eager login, done before the IdP is made slow
            if sidecar.upstreams["moex-ntb"].tokens.ready:
                break
            await asyncio.sleep(0.05)
        sandbox.idp.latency = 0.6  # the new login takes a while; the app keeps uploading
        head, tail = b"A" * (size - 10), b"C" * 10

        async def body() -> AsyncIterator[bytes]:
            yield head[:refuse_after]
            await asyncio.sleep(0.2)
            yield head[refuse_after:]
            await asyncio.sleep(1.0)
            yield tail

        async with aiohttp.ClientSession() as session:
            async with session.post(
                "http://api.moex.com/ntb/upload", data=body(), proxy=proxy_url(sidecar)
            ) as resp:
                status, answer = resp.status, await resp.read()
        whole = b'{"len": %d, "sha256": "%s"}' % (
            size, hashlib.sha256(head + tail).hexdigest().encode()
        )
        # Replayed whole (the kept start plus the rest the app had not sent yet), or, when more
        # than replay_limit had already gone to the refused request, the 401 itself. Never a
        # success with part of the body.
        if replayed:
            assert (status, answer) == (200, whole)
            assert api.seen[-1] == (200, size)
        else:
            assert (status, answer) == (401, b"token expired; done")
            assert [s for s, _ in api.seen] == [401]
    finally:
        assert api.server is not None
        api.server.close()
