"""The steps of one proxied request, seen from a scripted upstream: each answer the exchange
receives is closed once it is done with (the replaced 401 and 429 answers included), so no
upstream connection is ever left lent out; a clean answer's connection is reused."""

from __future__ import annotations

from typing import Any

from sidecar.app import Sidecar
from tests.helpers.scripted import ScriptedServers, ScriptedUpstream, answer_of

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
DENIED = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied"
BUSY = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 4\r\n\r\nbusy"


async def _call(sidecar: Sidecar, request: bytes) -> bytes:
    head, body = await answer_of(sidecar.proxy_port, request)
    return head.split(b"\r\n", 1)[0] + b" " + body


GET = b"GET http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"
POST = (b"POST http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n"
        b"Content-Length: 4\r\n\r\nbody")


async def test_a_rejected_token_is_replayed_and_the_401_answer_is_not_left_open(
    make_sidecar: Any, scripted_upstreams: ScriptedServers
) -> None:
    upstream = await scripted_upstreams.start(ScriptedUpstream(turns=[DENIED], default=OK))
    sidecar: Sidecar = await make_sidecar({"target": upstream.url})
    assert await _call(sidecar, POST) == b"HTTP/1.1 200 OK ok"
    runtime = sidecar.upstreams["moex-ntb"]
    assert len(upstream.tokens) == 2 and upstream.tokens[0] != upstream.tokens[1]
    assert runtime.client.in_use == 0
    assert runtime.inflight.count == 0


async def test_a_429_retried_closes_the_first_answer(
    make_sidecar: Any, scripted_upstreams: ScriptedServers
) -> None:
    upstream = await scripted_upstreams.start(ScriptedUpstream(turns=[BUSY], default=OK))
    sidecar: Sidecar = await make_sidecar({"target": upstream.url, "retry_on_429": True})
    assert await _call(sidecar, GET) == b"HTTP/1.1 200 OK ok"
    runtime = sidecar.upstreams["moex-ntb"]
    assert len(upstream.tokens) == 2
    assert runtime.client.in_use == 0


async def test_clean_answers_reuse_one_upstream_connection(
    make_sidecar: Any, scripted_upstreams: ScriptedServers
) -> None:
    upstream = await scripted_upstreams.start(ScriptedUpstream(default=OK))
    sidecar: Sidecar = await make_sidecar({"target": upstream.url})
    for request in (GET, POST, GET):
        assert await _call(sidecar, request) == b"HTTP/1.1 200 OK ok"
    assert upstream.connections == 1
    assert sidecar.upstreams["moex-ntb"].client.idle == 1


async def test_a_refusal_before_sending_touches_no_connection(
    make_sidecar: Any, scripted_upstreams: ScriptedServers
) -> None:
    upstream = await scripted_upstreams.start(ScriptedUpstream(default=OK))
    sidecar: Sidecar = await make_sidecar({"target": upstream.url, "max_body": 2})
    answer = await _call(sidecar, POST)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"error": "body_too_large"' in answer
    assert upstream.connections == 0
