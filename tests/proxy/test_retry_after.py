"""``Retry-After`` from upstreams and IdPs: one strict parser, clamped to MAX_RETRY_AFTER, so
that no one answer (400 digits, a superscript digit, a date in the year 9999) jams an
upstream for good or breaks /status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.config.models import RateLimit
from sidecar.http1.retry_after import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    parse_retry_after,
    retry_after_header,
    retry_after_or_default,
)
from sidecar.proxy.errors import error_response
from sidecar.proxy.ratelimit import RateLimiter
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.scripted import read_body, start_upstream

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
HUGE = "9" * 400


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0), (" 12\t", 12.0), ("0", 0.0), ("007", 7.0), ("3600", 3600.0),
        ("3601", MAX_RETRY_AFTER), (HUGE, MAX_RETRY_AFTER), ("1" + "0" * 5000, MAX_RETRY_AFTER),
        ("0" * 400 + "5", 5.0),
        (None, None), ("", None), ("soon", None), ("-1", None), ("+5", None), ("1.5", None),
        ("1e3", None), ("²", None), ("٣", None), ("１", None), ("5 5", None), ("inf", None),
        ("nan", None), ("Infinity", None),
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),  # IMF-fixdate, 30 s ahead
        ("Tuesday, 14-Nov-23 22:14:20 GMT", 60.0),  # rfc850
        ("Tue Nov 14 22:15:20 2023", 120.0),  # asctime
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
        ("Tue, 31 Feb 2023 22:13:50 GMT", None), ("Tue, 14 Nov 2023 25:13:50 GMT", None),
        ("Tue, 14 Nov 2023 22:13:50 UTC", None), ("Tue, ²4 Nov 2023 22:13:50 GMT", None),
        ("tomorrow, 14 Nov 2023 22:13:50 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_the_default_applies_only_without_a_valid_value() -> None:
    assert retry_after_or_default(None) == DEFAULT_RETRY_AFTER
    assert retry_after_or_default("garbage", 5) == 5
    assert retry_after_or_default("²", 5) == 5
    assert retry_after_or_default("2", 5) == 2
    assert retry_after_or_default(None, 10**9) == MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.2, "1"), (7.1, "8"), (math.inf, "3600"), (1e400, "3600"), (math.nan, "1"), (-3, "1")],
)
def test_the_sidecars_own_retry_after_is_always_a_small_integer(
    seconds: float, header: str
) -> None:
    assert retry_after_header(seconds) == header
    answer = error_response(429, "rate_limited", "wait", retry_after=seconds)
    assert answer.headers["Retry-After"] == header


async def test_a_pause_never_exceeds_the_clamp() -> None:
    limiter = RateLimiter(RateLimit(rps=10))
    limiter.pause(math.inf)
    assert limiter.paused_for <= MAX_RETRY_AFTER
    await limiter.close()


# -- through a running sidecar ------------------------------------------------------------------


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            await read_body(reader, head)
            if head.startswith(b"GET /busy "):
                writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %b\r\n"
                             b"Content-Length: 0\r\n\r\n" % HUGE.encode())
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    writer.close()


@pytest.fixture
async def proxy(make_sidecar: Any, sandbox: SandboxStack) -> AsyncIterator[Sidecar]:
    server = await start_upstream(sandbox, _upstream, "busy")
    port = server.sockets[0].getsockname()[1]
    yield await make_sidecar({
        "target": f"https://127.0.0.1:{port}",
        "rate_limit": {"rps": 50, "burst": 5, "max_wait": 2},
    })
    server.close()


async def _get(port: int, target: str) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET %b HTTP/1.1\r\nHost: api.moex.com\r\nConnection: close\r\n\r\n"
                     % target.encode())
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def _strict_json(body: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(body, parse_constant=refuse)


async def test_a_400_digit_retry_after_does_not_jam_the_upstream(proxy: Sidecar) -> None:
    head, _ = await _get(proxy.proxy_port, "http://api.moex.com/busy")
    assert head.startswith(b"HTTP/1.1 429 ")
    for _ in range(3):  # later requests: the sidecar's own 429, never a 500
        head, body = await _get(proxy.proxy_port, "http://api.moex.com/after")
        assert head.startswith(b"HTTP/1.1 429 "), head
        assert _strict_json(body)["error"] == "rate_limited"
        retry = head.split(b"Retry-After: ")[1].split(b"\r\n")[0]
        assert 1 <= int(retry) <= MAX_RETRY_AFTER
    # /status stays valid JSON and shows the clamped pause.
    _, body = await _get(proxy.admin_port, "/status")
    paused = _strict_json(body)["upstreams"]["moex-ntb"]["rate_limit"]["paused_for"]
    assert MAX_RETRY_AFTER - 60 < paused <= MAX_RETRY_AFTER
