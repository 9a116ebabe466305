"""Hostile HTTP: request smuggling shapes and malformed input get a clean 400, nothing is
forwarded, and the log gets one short line without the offending bytes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.app import Sidecar
from sidecar.config import validate_config
from sidecar.proxy import upstream_client as client_module
from sidecar.sandbox.logfilter import MalformedRequests

SECRET_IN_URL = "access_token=app-s3cret-in-url"
CASES = {
    "content-length and chunked": b"POST http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com"
    b"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two content-lengths": b"POST http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n"
    b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "invalid chunk size": b"POST http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "obs-fold": b"GET http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\nX-A: a\r\n b\r\n\r\n",
    "bare LF": b"GET http://api.moex.com/x HTTP/1.1\nHost: api.moex.com\n\n",
    "NUL in a header": b"GET http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n"
    b"X-A: a\x00b\r\n\r\n",
    "space before colon": b"POST http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n"
    b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "oversized request line": b"GET http://api.moex.com/?" + SECRET_IN_URL.encode()
    + b"a" * 9000 + b" HTTP/1.1\r\nHost: api.moex.com\r\n\r\n",
    "oversized header": b"GET http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\nX-A: "
    + b"a" * 9000 + b"\r\n\r\n",
    "non-ASCII host": "GET http://апи.moex.com/x HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "CONNECT with junk": b"CONNECT ::::: HTTP/1.1\r\nHost: x\r\n\r\n",
    "h2c upgrade": b"GET http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n"
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ\r\n\r\n",
    "websocket upgrade": b"GET http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n"
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw"
    b"==\r\nSec-WebSocket-Version: 13\r\n\r\n",
}


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_requests_get_4xx_and_reach_nothing(
    case: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[str] = []
    original = client_module.UpstreamClient.send

    async def record(self: object, method: str, url: object, *a: object, **kw: object) -> object:
        sent.append(str(url))
        return await original(self, method, url, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(client_module.UpstreamClient, "send", record)
    sidecar = Sidecar(validate_config({
        "listen": {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "upstreams": {"m": {"match": ["api.moex.com"], "target": "https://127.0.0.1:9",
                            "auth": {"type": "static", "token": "t0k3n"}}},
    }))
    await sidecar.start()
    caplog.set_level(logging.WARNING, logger="aiohttp.server")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
        writer.write(CASES[case])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
    finally:
        await sidecar.stop(grace=0.5)
    expected = {"oversized request line": b"414", "oversized header": b"431"}.get(case, b"400")
    assert answer.split(b" ", 2)[1] == expected, answer[:100]
    assert sent == []
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in records)
    assert SECRET_IN_URL not in caplog.text


def test_malformed_request_filter_keeps_other_errors() -> None:
    """A real handler error still logs at ERROR with its traceback."""
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "Error handling request", (), None)
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert MalformedRequests().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
