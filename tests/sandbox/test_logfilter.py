"""Malformed requests to a sandbox server log one short warning, without the bytes."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from sidecar.sandbox.logfilter import MalformedRequests
from sidecar.sandbox.servers import TlsServer

SECRET = "s3cr3t-in-a-broken-line"


async def test_server_start_installs_the_filter(caplog: pytest.LogCaptureFixture) -> None:
    server = TlsServer(web.Application(), None)
    await server.start()
    caplog.set_level(logging.WARNING, logger="aiohttp.server")
    try:
        assert any(
            isinstance(f, MalformedRequests) for f in logging.getLogger("aiohttp.server").filters
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /{SECRET} HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
    finally:
        await server.stop()
    assert answer.split(b" ", 2)[1] == b"400"
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in records)
    assert SECRET not in caplog.text


def test_other_errors_keep_their_traceback() -> None:
    record = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), None
    )
    try:
        raise RuntimeError("a bug")
    except RuntimeError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    assert MalformedRequests().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
