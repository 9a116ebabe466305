"""The admin listener (``sidecar.admin``) of a started sidecar: liveness, readiness by the
eager upstreams' tokens, per-upstream status with no secret in it, the Prometheus
exposition, and 404/405 for anything else."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from sidecar import __version__, hotpath
from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.listener import one_answer
from tests.helpers.sidecars import SidecarFactory, admin_url, proxy_url

NTB = "http://api.moex.com/ntb"


async def _get(sidecar: Sidecar, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(admin_url(sidecar) + path) as resp:
            assert resp.headers["Cache-Control"] == "no-store"
            return resp.status, await resp.json()


async def _wait_ready(sidecar: Sidecar, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if (await _get(sidecar, "/readyz"))[0] == 200:
                return
            await asyncio.sleep(0.05)


async def test_healthz_answers_while_nothing_is_ready(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sandbox.idp.hang(True)  # no token can come
    try:
        sidecar = await make_sidecar()
        assert await _get(sidecar, "/healthz") == (200, {"status": "ok"})
        assert await _get(sidecar, "/healthz?probe=k8s") == (200, {"status": "ok"})
        status, body = await _get(sidecar, "/readyz")
        assert status == 503
        assert body == {"status": "not ready",
                        "missing": [{"upstream": "moex-ntb", "reason": "no token yet"}]}
    finally:
        sandbox.idp.hang(False)


async def test_readyz_follows_the_eager_upstreams_tokens_and_draining(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sandbox.idp.fail_with(503)
    sidecar = await make_sidecar()
    async with asyncio.timeout(10):  # until the first login has failed
        while True:
            status, body = await _get(sidecar, "/readyz")
            assert status == 503
            if body["missing"][0]["reason"] != "no token yet":
                break
            await asyncio.sleep(0.05)
    [missing] = body["missing"]
    assert missing["upstream"] == "moex-ntb" and "503" in missing["reason"]
    sandbox.idp.fail_with(None)
    await _wait_ready(sidecar)  # the sidecar recovers by itself
    assert await _get(sidecar, "/readyz") == (200, {"status": "ready"})
    sidecar.draining = True  # what SIGTERM sets first
    assert await _get(sidecar, "/readyz") == (503, {"status": "shutting down"})


async def test_an_upstream_that_logs_in_lazily_does_not_hold_readiness(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sandbox.idp.hang(True)
    try:
        sidecar = await make_sidecar({"eager": False})
        assert await _get(sidecar, "/readyz") == (200, {"status": "ready"})
    finally:
        sandbox.idp.hang(False)


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_status_shows_each_upstream_and_no_secret(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(
        {"rate_limit": {"rps": 50, "burst": 5}},
        upstreams={"lazy": {
            "match": ["lazy.example"], "target": "https://lazy.example", "eager": False,
            "auth": {"type": "static", "token": "static-token-value-42"},
        }},
    )
    await _wait_ready(sidecar)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{NTB}/status-check", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 200
            sent = await resp.json()
    token = sent["headers"]["authorization"].split()[1]
    status, body = await _get(sidecar, "/status")
    assert status == 200
    assert body["version"] == __version__ and set(body["upstreams"]) == {"moex-ntb", "lazy"}
    assert body["hot_path"] == hotpath.describe()  # compiled modules, or pure Python
    ntb = body["upstreams"]["moex-ntb"]
    assert ntb["target"].startswith(sandbox.api_url)
    assert set(ntb["token"]) == {"state", "expires_in", "renew_in", "last_success",
                                 "last_error", "consecutive_failures", "credentials_refused",
                                 "next_attempt_in"}
    assert ntb["token"]["state"] == "valid" and ntb["token"]["consecutive_failures"] == 0
    assert set(ntb["client_cert"]) == {"subject", "not_after", "days_left"}
    assert "CN=sidecar" in ntb["client_cert"]["subject"]
    assert ntb["rate_limit"] == {"queue": 0, "paused_for": 0.0}
    lazy = body["upstreams"]["lazy"]
    assert lazy["client_cert"] is None and lazy["rate_limit"] is None

    text = json.dumps(body)
    password = next(iter(sandbox.idp.users.values()))
    for secret in (token, password, "static-token-value-42",
                   sandbox.client_cert.key_file.read_text().splitlines()[1]):
        assert secret not in text


async def test_metrics_is_a_valid_exposition_of_this_sidecar(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar()
    await _wait_ready(sidecar)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{NTB}/m", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 200
        async with session.get("http://unknown.example/", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 403
        async with session.get(admin_url(sidecar) + "/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
            text = await resp.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("sidecar_build_info", (("version", __version__),))] == 1
    assert samples[("sidecar_local_rejections_total",
                    (("reason", "unknown_host"), ("upstream", "none")))] == 1
    assert any(name.startswith("sidecar_") and ("upstream", "moex-ntb") in labels
               for name, labels in samples)
    # Each sidecar has its own registry: another instance's numbers never show here.
    other = await make_sidecar()
    status, _, body = await _raw(other, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 200 and b"unknown_host" not in body


async def _raw(sidecar: Sidecar, request: bytes) -> tuple[int, bytes, bytes]:
    head, body = await one_answer(sidecar.admin_port, request)
    return int(head.split(b" ")[1]), head, body


async def test_unknown_routes_are_404_and_other_methods_405(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar()
    status, head, body = await _raw(sidecar, b"GET /admin HTTP/1.1\r\n\r\n")
    assert status == 404 and b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "not_found",
                                "routes": ["/healthz", "/metrics", "/readyz", "/status"]}
    status, head, body = await _raw(
        sidecar, b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    assert status == 405 and b"Allow: GET, HEAD\r\n" in head
    assert json.loads(body)["error"] == "method_not_allowed"
    status, _, _ = await _raw(sidecar, b"DELETE /nothing HTTP/1.1\r\n\r\n")
    assert status == 404  # an unknown path is unknown whatever the method


async def test_head_gets_the_headers_of_get_and_no_body(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.admin_port)
    writer.write(b"HEAD /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 16\r\n" in head
    second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # no body in between
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert await asyncio.wait_for(reader.readexactly(16), 5) == b'{"status": "ok"}'
    writer.close()
