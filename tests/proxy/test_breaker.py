"""The circuit breaker: an upstream that gives no answer (nothing listening, a listener that
never accepts, an answer that never comes) makes requests fail fast with 503
``upstream_unavailable`` after ``failures`` in a row; one probe at a time tests it; an
answer closes it. HTTP answers, even 5xx, never count; a timeout never costs the token."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.config import validate_config
from sidecar.config.models import CircuitBreaker
from sidecar.proxy import breaker as breaker_module
from sidecar.proxy.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from tests.helpers.scripted import ScriptedServers, ScriptedUpstream, answer_of, ok

GET = b"GET http://api.moex.com/x HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"
OK = ok(b"ok")

# -- the state machine, on a clock the test moves ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(breaker_module.time, "monotonic", fake)
    yield fake


def test_opens_after_failures_in_a_row_and_an_answer_resets_the_count(clock: Clock) -> None:
    b = Breaker("u", CircuitBreaker(failures=3, cool_down=5, max_cool_down=300))
    b.failed(False)
    b.failed(False)
    b.succeeded()  # any answer: the count starts again
    assert b.clean and b.failures == 0
    for _ in range(2):
        b.failed(False)
        assert b.admit() is None
    b.failed(False)
    assert b.state == OPEN and not b.clean
    assert b.admit() == pytest.approx(5)
    assert b.status() == {"state": "open", "failures": 3, "open_for": 5.0}


def test_one_probe_at_a_time_and_the_cool_down_doubles_up_to_the_cap(clock: Clock) -> None:
    b = Breaker("u", CircuitBreaker(failures=1, cool_down=5, max_cool_down=12))
    b.failed(False)
    for expected in (10, 12, 12):  # 5 doubled, then capped
        clock.now += 100
        assert b.admit() is None  # the probe
        assert b.state == HALF_OPEN
        assert b.admit() == 5  # while it is out, others fail fast
        b.failed(False)  # a request sent earlier: not the probe's verdict
        assert b.state == HALF_OPEN
        b.failed(True)
        assert b.state == OPEN and b.open_for == pytest.approx(expected)
    clock.now += 100
    assert b.admit() is None
    b.succeeded()
    assert (b.state, b.clean) == (CLOSED, True)
    b.failed(False)  # opened again: the cool-down starts over from 5
    assert b.open_for == pytest.approx(5)


def test_an_abandoned_probe_lets_the_next_request_probe(clock: Clock) -> None:
    b = Breaker("u", CircuitBreaker(failures=1))
    b.failed(False)
    clock.now += 10
    assert b.admit() is None
    assert b.admit() is not None
    b.probe_abandoned()  # the app hung up, or no token: no verdict
    assert b.admit() is None


def test_a_disabled_breaker_never_opens(clock: Clock) -> None:
    b = Breaker("u", None)
    for _ in range(100):
        b.failed(False)
    assert b.clean and b.state == CLOSED and b.admit() is None


def test_the_documented_defaults_and_null_to_turn_it_off(sidecar_config: dict[str, Any]) -> None:
    upstream = sidecar_config["upstreams"]["moex-ntb"]
    assert validate_config(sidecar_config).upstreams["moex-ntb"].circuit_breaker == (
        CircuitBreaker(failures=5, cool_down=5, max_cool_down=300)
    )
    upstream["circuit_breaker"] = None
    assert validate_config(sidecar_config).upstreams["moex-ntb"].circuit_breaker is None


def test_max_cool_down_below_cool_down_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="max_cool_down"):
        CircuitBreaker(cool_down=10, max_cool_down=5)


# -- through a running sidecar -------------------------------------------------------------


class Answer:
    def __init__(self, head: bytes, body: bytes, seconds: float) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v for k, v in (ln.split(": ", 1) for ln in lines[1:] if ln)}
        self.body = body
        self.seconds = seconds

    @property
    def error(self) -> str | None:
        try:
            return json.loads(self.body).get("error")
        except ValueError:
            return None


async def _call(port: int, request: bytes = GET) -> Answer:
    started = time.monotonic()
    head, body = await answer_of(port, request, 10)
    return Answer(head, body, time.monotonic() - started)


async def _admin(sidecar: Sidecar, path: str) -> str:
    answer = await _call(
        sidecar.admin_port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    return answer.body.decode()


async def _until_answered(port: int, limit: float = 10.0) -> Answer:
    deadline = time.monotonic() + limit
    while True:
        answer = await _call(port)
        if answer.status == 200 or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def test_nothing_listening_opens_the_breaker_then_the_api_comes_back(
    make_sidecar: Any, scripted_upstreams: ScriptedServers
) -> None:
    # A bound socket that does not listen: every connection is refused, and the port
    # stays ours for when the API "comes back".
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sidecar: Sidecar = await make_sidecar({
        "target": f"https://127.0.0.1:{port}",
        "circuit_breaker": {"failures": 3, "cool_down": 0.5, "max_cool_down": 1},
    })
    runtime = sidecar.upstreams["moex-ntb"]
    token = await runtime.tokens.get()
    for _ in range(3):
        answer = await _call(sidecar.proxy_port)
        assert (answer.status, answer.error) == (502, "upstream_unreachable")
    answer = await _call(sidecar.proxy_port)
    assert (answer.status, answer.error) == (503, "upstream_unavailable")
    assert answer.headers["retry-after"] == "1"
    status = json.loads(await _admin(sidecar, "/status"))["upstreams"]["moex-ntb"]["breaker"]
    assert status["state"] == "open" and status["failures"] == 3
    assert 0 <= status["open_for"] <= 0.5
    metrics = await _admin(sidecar, "/metrics")
    assert 'sidecar_upstream_breaker_open{upstream="moex-ntb"} 1.0' in metrics
    assert ('sidecar_local_rejections_total{reason="upstream_unavailable",upstream="moex-ntb"}'
            in metrics)

    sock.listen()
    recorder = await scripted_upstreams.start(ScriptedUpstream(default=OK), "recovered", sock)
    answer = await _until_answered(sidecar.proxy_port)
    assert answer.status == 200
    assert runtime.breaker.status() == {"state": "closed", "failures": 0, "open_for": 0.0}
    # The silence cost no token: the one from before the outage is still used.
    assert recorder.tokens == [f"Bearer {token.value}"]
    metrics = await _admin(sidecar, "/metrics")
    assert 'sidecar_upstream_breaker_open{upstream="moex-ntb"} 0.0' in metrics


async def test_a_listener_that_never_accepts_fails_fast_after_the_timeouts(
    make_sidecar: Any,
) -> None:
    # Listening with a backlog of one, already taken: further connections hang unanswered,
    # as with an API that drops packets.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    connect_timeout = 1.0
    sidecar: Sidecar = await make_sidecar({
        "target": f"https://127.0.0.1:{port}",
        "timeouts": {"connect": connect_timeout},
        "circuit_breaker": {"failures": 2, "cool_down": 0.5, "max_cool_down": 5},
    })
    runtime = sidecar.upstreams["moex-ntb"]
    try:
        slow = [await _call(sidecar.proxy_port) for _ in range(2)]
        assert [(a.status, a.error) for a in slow] == [(504, "upstream_timeout")] * 2
        assert all(a.seconds >= connect_timeout * 0.9 for a in slow)
        fast = await _call(sidecar.proxy_port)
        assert (fast.status, fast.error) == (503, "upstream_unavailable")
        assert fast.seconds < connect_timeout

        # After the cool-down one probe goes; while it waits, the others still fail fast.
        await asyncio.sleep(0.6)
        probe = asyncio.create_task(_call(sidecar.proxy_port))
        while runtime.breaker.state != HALF_OPEN:  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.01)
        other = await _call(sidecar.proxy_port)
        assert (other.status, other.error) == (503, "upstream_unavailable")
        assert not probe.done()
        assert (await probe).status == 504
        assert runtime.breaker.state == OPEN  # the probe's silence opened it again
        assert runtime.breaker.failures == 3
    finally:
        filler.close()
        sock.close()


async def test_a_read_timeout_counts_and_never_costs_the_token(
    make_sidecar: Any, scripted_upstreams: ScriptedServers
) -> None:
    recorder = await scripted_upstreams.start(ScriptedUpstream(silent={"/x"}), "silent")
    sidecar: Sidecar = await make_sidecar({
        "target": recorder.url,
        "timeouts": {"read": 0.3},
        "circuit_breaker": {"failures": 2},
    })
    runtime = sidecar.upstreams["moex-ntb"]
    token = await runtime.tokens.get()
    for _ in range(2):
        assert (await _call(sidecar.proxy_port)).error == "upstream_timeout"
    assert (await _call(sidecar.proxy_port)).error == "upstream_unavailable"
    assert len(recorder.tokens) == 2  # the third never reached the upstream
    assert runtime.tokens.peek() is token  # not invalidated, no new login


async def test_http_error_answers_never_open_it(
    make_sidecar: Any, scripted_upstreams: ScriptedServers
) -> None:
    down = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"
    recorder = await scripted_upstreams.start(ScriptedUpstream(default=down), "failing")
    sidecar: Sidecar = await make_sidecar({
        "target": recorder.url,
        "circuit_breaker": {"failures": 1},
    })
    for _ in range(4):
        answer = await _call(sidecar.proxy_port)
        assert (answer.status, answer.body) == (503, b"down")
    assert sidecar.upstreams["moex-ntb"].breaker.clean
