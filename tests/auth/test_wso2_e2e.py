"""KISC end to end: sidecar → emulated WSO2 gateway with mTLS on /token and on the API."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.wso2 import issue_kisc_client
from tests.helpers.samples import MESSAGES, PACS_008
from tests.helpers.sidecars import Kisc, SidecarFactory, proxy_url


async def _post(session: aiohttp.ClientSession, sidecar: Sidecar, body: bytes,
                key: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/xml", "Accept": "application/xml"}
    if key is not None:
        headers["x-idempotency-key"] = key
    async with session.post(MESSAGES, data=body, headers=headers,
                            proxy=proxy_url(sidecar)) as resp:
        return resp.status, await resp.read()


async def test_pacs008_reaches_kisc_with_token_cert_fapi_headers_and_exact_body(
    kisc: Kisc, kisc_sidecar: Sidecar
) -> None:
    async with aiohttp.ClientSession() as session:
        status, _ = await _post(session, kisc_sidecar, PACS_008, "GRO2026112200001")
        assert status == 202
        seen = kisc.gateway.stats()["last_request"]
        headers = seen["headers"]
        assert kisc.gateway.is_access_token_valid(headers["authorization"].removeprefix("Bearer "))
        assert "CN=bank-user" in seen["client_cert"]["subject"]
        assert str(uuid.UUID(headers["x-fapi-interaction-id"])) == headers["x-fapi-interaction-id"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+06:00", headers["x-fapi-auth-date"])
        assert headers["x-idempotency-key"] == "GRO2026112200001"
        assert seen["body_sha256"] == hashlib.sha256(PACS_008).hexdigest()

        assert kisc.gateway.message("GRO2026112200001") == PACS_008
        # The bank reads its incoming messages: the list (unread ones, not its own POSTs),
        # then one message by key.
        kisc.gateway.deliver(PACS_008, "GRO2026112200002")
        async with session.get(MESSAGES, proxy=proxy_url(kisc_sidecar)) as resp:
            listed = await resp.read()
            assert resp.status == 200
    assert b"GRO2026112200002" in listed and b"GRO2026112200001" not in listed
    # The list through the sidecar is byte for byte what the gateway serves directly.
    client = issue_kisc_client(kisc.pki)
    token = kisc.gateway.stats()["last_request"]["headers"]["authorization"]
    async with aiohttp.ClientSession() as direct:
        async with direct.get(kisc.server.url + "/etsfo/1.0.0/messages/",
                              ssl=kisc.pki.client_ssl_context(client),
                              headers={"Authorization": token}) as resp:
            assert await resp.read() == listed
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{MESSAGES}GRO2026112200002",
                               proxy=proxy_url(kisc_sidecar)) as resp:
            assert resp.status == 200
            assert await resp.read() == PACS_008


async def test_post_without_idempotency_key_is_refused_locally(
    kisc: Kisc, kisc_sidecar: Sidecar
) -> None:
    kisc.gateway.reset_stats()
    async with aiohttp.ClientSession() as session:
        async with session.post(MESSAGES, data=PACS_008, proxy=proxy_url(kisc_sidecar)) as resp:
            body = await resp.json()
            assert resp.status == 400
    assert body["error"] == "missing_header"
    assert "x-idempotency-key" in body["message"] and body["upstream"] == "kisc"
    stats = kisc.gateway.stats()
    assert stats["requests"] == 0 and stats["missing_idempotency"] == 0


@pytest.mark.parametrize("certificate", ["none", "other-ca"])
async def test_token_call_without_a_valid_client_certificate_fails_clearly(
    kisc: Kisc, make_sidecar: SidecarFactory, kisc_config: dict[str, Any], tmp_path: Path,
    certificate: str,
) -> None:
    tls = {"ca_file": kisc_config["tls"]["ca_file"]}
    if certificate == "other-ca":
        stranger = Pki(tmp_path / "stranger").issue_client("bank", "bank-user")
        tls |= {"cert_file": str(stranger.cert_file), "key_file": str(stranger.key_file)}
    config = {**kisc_config, "tls": tls, "timeouts": {"token_wait": 3}}
    sidecar = await make_sidecar(upstreams={"kisc": config})
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        status, raw = await _post(session, sidecar, PACS_008, "K-1")
    assert time.monotonic() - started < 3.5
    assert status == 503
    assert b"no_token" in raw and b"kisc" in raw
    assert re.search(rb"TLS|connection|certificate|handshake", raw, re.I), raw
    assert kisc.gateway.stats()["requests"] == 0


async def test_two_second_tokens_rotate_refresh_tokens_without_reuse_or_errors(
    kisc: Kisc, kisc_sidecar: Sidecar
) -> None:
    kisc.gateway.access_ttl = 2
    kisc.gateway.expire_tokens()  # the eager login's hour-long token goes; 2 s ones follow
    kisc.gateway.reset_stats()
    statuses: list[int] = []
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                status, _ = await _post(session, kisc_sidecar, PACS_008, f"LOAD-{n}-{i}")
                statuses.append(status)

        await asyncio.gather(*(client(n) for n in range(8)))
    stats = kisc.gateway.stats()
    assert len(statuses) > 100
    assert set(statuses) == {202}, {s: statuses.count(s) for s in set(statuses)}
    assert stats["by_grant"].get("refresh_token", 0) >= 4
    assert stats["refresh_reuse"] == 0
    assert stats["max_concurrent"] == 1


async def test_expired_token_fault_is_replayed_and_forbidden_fault_passes(
    kisc: Kisc, kisc_sidecar: Sidecar
) -> None:
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, kisc_sidecar, PACS_008, "F-0"))[0] == 202
        kisc.gateway.expire_tokens()  # the gateway now answers 401 fault 900901
        kisc.gateway.reset_stats()
        status, _ = await _post(session, kisc_sidecar, PACS_008, "F-1")
        assert status == 202
        stats = kisc.gateway.stats()
        assert stats["rejected"] == 1 and stats["duplicate_posts"] == 0
        # The replay carried the same idempotency key and interaction id as the refused send.
        assert stats["last_request"]["headers"]["x-idempotency-key"] == "F-1"

        kisc.gateway.force_fault(900908)
        status, raw = await _post(session, kisc_sidecar, PACS_008, "F-2")
        assert status == 403
        assert b"900908" in raw
        # It went back untouched: no new token was fetched for it.
        assert kisc.gateway.stats()["by_grant"].get("password", 0) + kisc.gateway.stats()[
            "by_grant"].get("refresh_token", 0) == 1


async def test_load_across_an_expiry_fault_is_invisible(kisc: Kisc, kisc_sidecar: Sidecar) -> None:
    statuses: list[int] = []
    deadline = time.monotonic() + 4
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                statuses.append((await _post(session, kisc_sidecar, PACS_008, f"E-{n}-{i}"))[0])

        async def expire_midway() -> None:
            await asyncio.sleep(1.5)
            kisc.gateway.expire_tokens()

        await asyncio.gather(expire_midway(), *(client(n) for n in range(8)))
    assert set(statuses) == {202}, {s: statuses.count(s) for s in set(statuses)}
    assert kisc.gateway.stats()["rejected"] >= 1


async def test_inactive_token_fault_is_a_dead_token(kisc: Kisc, kisc_sidecar: Sidecar) -> None:
    """900904 "Access Token Inactive" (a revoked token) gets a new token and the replay, like
    900901; before, the app got the 401 for as long as the token had left to live."""
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, kisc_sidecar, PACS_008, "I-0"))[0] == 202
        kisc.gateway.reset_stats()
        kisc.gateway.force_fault(900904)
        status, _ = await _post(session, kisc_sidecar, PACS_008, "I-1")
        assert status == 202
        stats = kisc.gateway.stats()
        assert stats["by_grant"].get("refresh_token", 0) + stats["by_grant"].get("password", 0) == 1
        assert stats["last_request"]["headers"]["x-idempotency-key"] == "I-1"
