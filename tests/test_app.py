"""The sidecar process as operators run it: readiness, graceful SIGTERM, metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.sandbox.servers import SandboxStack


class SidecarProcess:
    """`sidecar run` as a child process, its JSON log lines collected."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config_file = workdir / "sidecar.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.proxy = self.admin = ""

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "run", "--config", str(self.config_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        self._reader = asyncio.create_task(self._read())
        started = await self.wait_for("started")
        self.proxy, self.admin = started["proxy"], started["admin"]

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            text = raw.decode(errors="replace")
            self.raw.append(text)
            try:
                self.lines.append(json.loads(text))
            except ValueError:
                pass

    async def wait_for(self, event: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.get("event") == event:
                    return line
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event!r} in:\n{''.join(self.raw)}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


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
    from tests.conftest import proxy_url

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
