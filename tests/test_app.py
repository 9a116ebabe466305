"""The sidecar process as operators run it: readiness, graceful SIGTERM, metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.sandbox.servers import SandboxStack
from tests.helpers.process import SidecarProcess
from tests.helpers.sidecars import proxy_url


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_readyz_before_token_and_after_sigterm_with_inflight_requests_finishing(
    sandbox: SandboxStack, sidecar_config: dict[str, Any], tmp_path: Path
) -> None:
    sandbox.idp.latency = 1.0  # the first login takes a second: /readyz must say 503 meanwhile
    config = sidecar_config | {"shutdown": {"delay": 0.5, "grace": 10}}
    proc = SidecarProcess(config, tmp_path)
    try:
        await proc.start()
        async with aiohttp.ClientSession() as session:
            status, body = await _get(session, f"http://{proc.admin}/readyz")
            assert status == 503 and body["missing"][0]["upstream"] == "moex-ntb"
            await proc.wait_for("token_obtained")
            status, _ = await _get(session, f"http://{proc.admin}/readyz")
            assert status == 200

            # Twelve slow uploads are in flight when SIGTERM arrives.
            async def slow_body() -> Any:
                for _ in range(20):
                    yield os.urandom(1024)
                    await asyncio.sleep(0.1)

            async def upload(i: int) -> tuple[int, int]:
                async with session.post(
                    f"http://api.moex.com/ntb/slow/{i}", data=slow_body(),
                    proxy=f"http://{proc.proxy}",
                ) as resp:
                    return resp.status, (await resp.json())["body_length"]

            uploads = asyncio.gather(*(upload(i) for i in range(12)))
            await asyncio.sleep(0.3)
            sent_at = time.monotonic()
            proc.signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            status, body = await _get(session, f"http://{proc.admin}/readyz")
            assert (status, body["status"]) == (503, "shutting down")
            assert await uploads == [(200, 20 * 1024)] * 12, "".join(proc.raw)
        assert await proc.wait(timeout=15) == 0
        assert time.monotonic() - sent_at < 10
        assert any(line.get("event") == "draining" for line in proc.lines)
    finally:
        await proc.kill()


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_request_id_is_kept_or_made_and_status_shows_each_upstream(
    sandbox: SandboxStack, make_sidecar: Any
) -> None:
    sidecar = await make_sidecar()
    async with aiohttp.ClientSession() as session:
        async with session.get("http://api.moex.com/ntb/rid", proxy=proxy_url(sidecar),
                               headers={"X-Request-ID": "app-chosen-42"}) as resp:
            seen = await resp.json()
            assert resp.headers["X-Request-ID"] == "app-chosen-42"
        assert seen["headers"]["x-request-id"] == "app-chosen-42"
        async with session.get("http://api.moex.com/ntb/rid", proxy=proxy_url(sidecar)) as resp:
            made = resp.headers["X-Request-ID"]
            assert (await resp.json())["headers"]["x-request-id"] == made
        assert len(made) == 32
        async with session.get("http://nowhere.example/", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 403
        status, body = await _get(session, f"http://127.0.0.1:{sidecar.admin_port}/status")
    assert status == 200
    ntb = body["upstreams"]["moex-ntb"]
    assert ntb["token"]["state"] == "valid"
    assert 250 < ntb["token"]["expires_in"] <= 300
    assert ntb["token"]["last_success"] is not None
    assert ntb["token"]["consecutive_failures"] == 0 and ntb["token"]["last_error"] is None
    assert "CN=sidecar" in ntb["client_cert"]["subject"] and ntb["client_cert"]["days_left"] > 20
    assert "eyJ" not in json.dumps(body)
