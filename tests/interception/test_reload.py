"""Reloads: the per-upstream switch applies at once; the interception block needs a restart
(its CA is read at start), and says so."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from sidecar.config import validate_config
from tests.helpers.sidecars import deep_merge
from tests.interception.conftest import HOST, Intercepting


async def _connect_status(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    writer.close()
    return int(head.split(b" ", 2)[1])


async def test_switch_per_upstream_by_reload(
    intercepting: Intercepting, sidecar_config: dict[str, Any]
) -> None:
    sidecar = intercepting.sidecar
    assert await _connect_status(intercepting.port) == 200
    on = {"interception": sidecar.config.interception.model_dump(mode="json")}  # type: ignore[union-attr]
    off = deep_merge(sidecar_config, {**on, "upstreams": {"moex-ntb": {"interception": False}}})
    await sidecar.apply(validate_config(off))
    assert await _connect_status(intercepting.port) == 403


async def test_block_change_needs_restart(
    intercepting: Intercepting, sidecar_config: dict[str, Any]
) -> None:
    sidecar = intercepting.sidecar
    with capture_logs() as logs:
        await sidecar.apply(validate_config(sidecar_config))  # no interception block
    assert "interception_change_needs_restart" in [e["event"] for e in logs]
    assert await _connect_status(intercepting.port) == 200  # until the restart
