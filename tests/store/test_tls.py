"""``rediss://`` against a real redis-server that speaks TLS only and requires a client
certificate: replicas with the certificate share one login; a replica without it is
refused by the server, says why in /status, and goes on alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url
from tests.store.conftest import RedisServer, RedisTls, write_key

NTB = "http://api.moex.com/ntb/"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "redis-pki", name="redis test CA")


@pytest.fixture
async def tls_redis(tmp_path: Path, pki: Pki) -> AsyncIterator[RedisServer]:
    server = pki.issue_server("redis", ("127.0.0.1",))
    client = pki.issue_client("redis-test-client")
    redis = RedisServer(tmp_path, RedisTls(server.cert_file, server.key_file, pki.ca_file,
                                           client.cert_file, client.key_file))
    await redis.start()
    try:
        yield redis
    finally:
        await redis.kill()


async def _until_state(sidecar: Sidecar, state: str, limit: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        status = sidecar.store.status()
        assert status is not None
        if status["state"] == state:
            return status
        assert time.monotonic() < deadline, f"store never {state}: {status}"
        await asyncio.sleep(0.05)


async def test_rediss_with_a_client_certificate_shares_one_login_and_refuses_one_without(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, tls_redis: RedisServer, pki: Pki,
    tmp_path: Path,
) -> None:
    replica = pki.issue_client("replica")
    store = {
        "type": "redis", "url": tls_redis.url, "timeout": 1.0,
        "encryption_key_file": str(write_key(tmp_path / "store-key")),
        "tls": {"ca_file": str(pki.ca_file), "cert_file": str(replica.cert_file),
                "key_file": str(replica.key_file)},
    }
    first = await make_sidecar(store=store)
    second = await make_sidecar(store=store)
    for sidecar in (first, second):
        await _until_state(sidecar, "up")
    tokens = [await s.upstreams["moex-ntb"].tokens.get() for s in (first, second)]
    assert tokens[0].value == tokens[1].value
    assert dict(sandbox.idp.stats()["by_grant"]) == {"password": 1}
    assert await tls_redis.dump()  # the shared record went over TLS into this server

    # No client certificate: the server ends the handshake; the replica works alone.
    bare = await make_sidecar(store=store | {"tls": {"ca_file": str(pki.ca_file)}})
    status = await _until_state(bare, "down")
    assert status["last_error"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{NTB}alone", proxy=proxy_url(bare)) as resp:
            assert resp.status == 200
