"""What an upstream or an IdP sends in a response head (and in chunked trailers) is bounded
and stays with its own response: trailers are dropped, never read as the next answer's
headers; a head over the limits is a 502 for the app and a failed login with a reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from sidecar.app import Sidecar
from sidecar.auth.base import AuthError
from sidecar.auth.client_credentials import ClientCredentialsFlow
from sidecar.auth.oauth import TokenEndpoint
from sidecar.config.auth import ClientCredentialsAuth
from sidecar.http1.wire import MAX_FIELD, MAX_FIELDS, MAX_HEAD
from sidecar.sandbox.pki import Pki
from tests.helpers.scripted import (
    GET,
    ScriptedServers,
    ScriptedUpstream,
    Writer,
    answer_of,
    ok,
)

FLOOD = 64 * 1024 * 1024  # what a hostile peer offers; the sidecar must stop reading early
TRAILED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Leaked, Set-Cookie\r\n"
           b"\r\n5\r\nfirst\r\n0\r\nX-Leaked: yes\r\nSet-Cookie: session=stolen\r\n\r\n")


@dataclass
class Flooding(ScriptedUpstream):
    """A scripted upstream whose answers can be writer coroutines; ``sent`` counts what its
    flood writers got onto the connection before it broke."""

    sent: int = 0

    def flood(self, start: bytes, line: bytes) -> Writer:
        """A writer sending ``start`` then ``line`` over and over, up to FLOOD bytes, then
        keeping the connection open without ending the head."""

        async def write(writer: asyncio.StreamWriter) -> None:
            writer.write(start)
            while self.sent < FLOOD:
                writer.write(line * 64)
                await writer.drain()  # raises once the sidecar has hung up
                self.sent += len(line) * 64
            await asyncio.sleep(30)

        return write


@pytest.fixture
async def up(scripted_upstreams: ScriptedServers) -> Flooding:
    return await scripted_upstreams.start(Flooding(), "flooding")


@pytest.fixture
async def proxy(make_sidecar: Any, up: Flooding) -> Sidecar:
    sidecar: Sidecar = await make_sidecar({"target": up.url, "timeouts": {"read": 3.0}})
    return sidecar


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def test_trailers_never_become_the_next_answers_headers(
    proxy: Sidecar, up: Flooding
) -> None:
    up.answers["/trailed"] = TRAILED
    up.answers["/next"] = ok(b"next")
    head, body = await answer_of(proxy.proxy_port, GET % b"trailed", 10)
    assert body == b"first"
    # Another app connection: the pooled upstream connection is lent to it.
    head, body = await answer_of(proxy.proxy_port, GET % b"next", 10)
    assert body == b"next" and up.connections == 1
    assert b"x-leaked" not in head.lower() and b"session=stolen" not in head


async def test_a_huge_upstream_head_is_a_502_and_memory_stays_bounded(
    proxy: Sidecar, up: Flooding
) -> None:
    up.answers["/huge"] = up.flood(b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"a" * 1000 + b"\r\n")
    before = _rss()
    head, body = await answer_of(proxy.proxy_port, GET % b"huge", 10)
    assert head.startswith(b"HTTP/1.1 502 ")
    answer = json.loads(body)
    assert answer["error"] == "upstream_error" and "headers" in answer["message"]
    assert up.sent < FLOOD // 8  # the sidecar stopped reading, it did not buffer the flood
    assert _rss() - before < 48 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("line", ok(b"x", b"X-Long: " + b"a" * (MAX_FIELD + 1))),
        ("count", ok(b"x", *(b"X-%d: 1" % i for i in range(MAX_FIELDS + 1)))),
        ("total", ok(b"x", *(b"X-%d: %b" % (i, b"a" * 8000) for i in range(MAX_HEAD // 8000 + 1)))),
        ("status", b"HTTP/1.1 200 " + b"O" * (MAX_FIELD + 1) + b"\r\nContent-Length: 0\r\n\r\n"),
    ],
)
async def test_each_head_limit_is_a_502(
    proxy: Sidecar, up: Flooding, name: str, answer: bytes
) -> None:
    up.answers["/" + name] = answer
    head, body = await answer_of(proxy.proxy_port, GET % name.encode(), 10)
    assert head.startswith(b"HTTP/1.1 502 ")
    assert json.loads(body)["error"] == "upstream_error"


async def test_a_head_just_under_the_limits_passes(proxy: Sidecar, up: Flooding) -> None:
    up.answers["/full"] = ok(b"x", *(b"X-%d: %b" % (i, b"a" * 7000) for i in range(4)))
    head, body = await answer_of(proxy.proxy_port, GET % b"full", 10)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"x"


async def test_endless_trailers_break_the_answer_off(proxy: Sidecar, up: Flooding) -> None:
    up.answers["/trailers"] = up.flood(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n",
        b"X-Trailer: " + b"t" * 100 + b"\r\n",
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    try:
        writer.write(GET % b"trailers")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        try:  # the sidecar breaks the answer off (a reset, or a close with no last chunk)
            rest = await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:  # reset, or our write found it closed
            rest = b""
    finally:
        writer.close()
    assert not rest.endswith(b"0\r\n\r\n")
    assert up.sent < FLOOD // 8


# -- an IdP -------------------------------------------------------------------------------------


@pytest.fixture
async def idp(tmp_path: Path) -> AsyncIterator[tuple[str, Pki, Flooding]]:
    """A scripted HTTPS token endpoint (no client certificate asked)."""
    pki = Pki(tmp_path / "idp-pki")
    async with ScriptedServers(pki) as servers:
        scripted = await servers.start(Flooding(), "idp")
        yield f"{scripted.url}/token", pki, scripted


async def test_an_idp_with_a_huge_head_fails_the_login_with_a_reason(
    idp: tuple[str, Pki, Flooding],
) -> None:
    url, pki, scripted = idp
    scripted.answers["/token"] = scripted.flood(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
        b"Set-Cookie: passport=" + b"c" * 4000 + b"\r\n",
    )
    cfg = ClientCredentialsAuth.model_construct(
        type="client_credentials", client_id="app", client_secret=SecretStr("s"),
    )
    flow = ClientCredentialsFlow(cfg, TokenEndpoint(url, pki.client_ssl_context(), 5.0))
    before = _rss()
    with pytest.raises(AuthError) as caught:
        await flow.login()
    assert "headers over" in caught.value.reason and "127.0.0.1" in caught.value.reason
    assert scripted.sent < FLOOD // 8
    assert _rss() - before < 48 * 1024 * 1024
