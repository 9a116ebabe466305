"""Process-wide limits: the replay budget, listener connection caps, /status for loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from multidict import CIMultiDict

from sidecar.admin import AdminRoutes
from sidecar.app import Sidecar
from sidecar.config import validate_config
from sidecar.metrics import Metrics
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.scripted import read_body, start_upstream

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_kept_bodies_stay_within_the_replay_budget_and_requests_still_go(
    sandbox: SandboxStack, make_sidecar: Any
) -> None:
    release = asyncio.Event()
    received: list[int] = []

    async def slow_api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                received.append(len(await read_body(reader, head)))
                await release.wait()  # answers only once every upload is in
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await start_upstream(sandbox, slow_api, "slow")
    port = server.sockets[0].getsockname()[1]
    budget = 1024 * 1024
    sidecar: Sidecar = await make_sidecar(
        {"target": f"https://127.0.0.1:{port}", "replay_limit": 1024 * 1024},
        replay_budget=budget,
    )
    body = b"x" * (512 * 1024)

    async def upload() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
        writer.write(b"POST http://api.moex.com/up HTTP/1.1\r\nHost: api.moex.com\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 10)
        writer.close()
        return answer

    uploads = [asyncio.create_task(upload()) for _ in range(8)]
    for _ in range(100):
        if len(received) == 8:
            break
        await asyncio.sleep(0.05)
    assert received == [len(body)] * 8  # every upload went through whole
    kept = sidecar.replay_budget.used
    assert 0 < kept <= budget  # 8 x 512 KiB in flight, at most 1 MiB of it kept
    assert sidecar.replay_budget.exceeded >= 6
    release.set()
    answers = await asyncio.gather(*uploads)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    assert sidecar.replay_budget.used == 0  # given back when each exchange ended
    exposition = sidecar.metrics.registry.get_sample_value(
        "sidecar_replay_budget_exceeded_total", {"upstream": "moex-ntb"}
    )
    assert exposition is not None and exposition >= 6
    server.close()


async def test_idle_admin_connections_cannot_starve_healthz(make_sidecar: Any) -> None:
    sidecar: Sidecar = await make_sidecar(listen={"admin_max_connections": 8})
    idle = [await asyncio.open_connection("127.0.0.1", sidecar.admin_port) for _ in range(40)]
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.admin_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert sidecar._admin_server is not None
    assert len(sidecar._admin_server.connections) <= 8
    shed = sidecar.metrics.registry.get_sample_value(
        "sidecar_connections_shed_total", {"listener": "admin"}
    )
    assert shed is not None and shed >= 33
    for _, w in [*idle, (reader, writer)]:
        w.close()


class _Request:
    """Just what the admin routes read of a request, from a given peer."""

    def __init__(self, path: str, peer: str | None) -> None:
        self.raw_path, self.method, self.peer_host = path, "GET", peer
        self.answer: tuple[int, bytes] | None = None

    async def respond(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        self.answer = (status, body)


class _Observed:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = validate_config(config)
        self.draining = False
        self.metrics = Metrics()
        self.upstreams: dict[str, Any] = {}


async def test_status_is_served_to_loopback_clients_only_unless_exposed(
    sidecar_config: dict[str, Any],
) -> None:
    routes = AdminRoutes(_Observed(sidecar_config))
    for peer, allowed in [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
                          ("10.12.0.7", False), ("fd00::7", False), (None, False)]:
        request = _Request("/status", peer)
        await routes(request)  # type: ignore[arg-type]
        assert request.answer is not None
        status, body = request.answer
        assert (status == 200) is allowed, (peer, status)
        if not allowed:
            assert json.loads(body)["error"] == "status_loopback_only"
    probe = _Request("/healthz", "10.12.0.7")  # probes and metrics stay open to the cluster
    await routes(probe)  # type: ignore[arg-type]
    assert probe.answer is not None and probe.answer[0] == 200
    exposed = AdminRoutes(_Observed(sidecar_config | {"listen": {"expose_status": True}}))
    request = _Request("/status", "10.12.0.7")
    await exposed(request)  # type: ignore[arg-type]
    assert request.answer is not None and request.answer[0] == 200
