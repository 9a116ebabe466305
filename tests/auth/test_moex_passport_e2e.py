"""MOEX client registration end to end: Passport + detached RSA signature through the sidecar,
the test stand's limits (1 request/s, 1 MB, business hours) kept by the sidecar."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.sandbox import registration
from sidecar.sandbox.demo import moex_registration_upstream
from sidecar.sandbox.moex import MoexStack
from sidecar.sandbox.registration import MSK
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.samples import APPLICATIONS, document
from tests.helpers.sidecars import SidecarFactory, proxy_url


@pytest.fixture
def moex_config(moex: MoexStack, sandbox: SandboxStack, tmp_path: Path) -> dict[str, Any]:
    return moex_registration_upstream(moex, sandbox.token_url, sandbox.pki, tmp_path / "moex")


async def _post(session: aiohttp.ClientSession, proxy: str, body: bytes) -> tuple[int, Any]:
    async with session.post(APPLICATIONS, data=body, proxy=proxy,
                            headers={"Content-Type": "application/xml"}) as resp:
        return resp.status, (resp.headers.get("Location"), resp.headers.get("Retry-After"),
                             await resp.read())


async def test_curl_registers_through_passport_and_signature(
    sandbox: SandboxStack, moex: MoexStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    moex.passport.redirect = True  # Passport answers 302: the sidecar must not follow it
    sidecar = await make_sidecar(
        upstreams={"registration": moex_registration_upstream(
            moex, sandbox.token_url, sandbox.pki, tmp_path / "moex")}
    )
    doc = tmp_path / "registration.xml"
    doc.write_bytes(document(1))
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-i", "-x", proxy_url(sidecar), "-H", "Content-Type: application/xml",
        "--data-binary", f"@{doc}", APPLICATIONS,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    head = out.decode(errors="replace").split("\r\n\r\n", 1)[0]
    assert head.startswith("HTTP/1.1 202"), head
    assert "Location: /client/v1/applications/2026-11-20/1" in head
    by_grant = sandbox.idp.stats()["by_grant"]
    assert by_grant.get("passport") == 1  # the SSO verified the signature over the token
    token = moex.passport.issued[-1]
    assert "+" in token and "/" in token and token.endswith("=")
    assert moex.registration.document("2026-11-20", "1") == document(1)


async def test_twenty_registrations_keep_one_per_second(
    moex: MoexStack, make_sidecar: SidecarFactory, moex_config: dict[str, Any]
) -> None:
    sidecar = await make_sidecar(upstreams={"registration": moex_config})
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(_post(session, proxy_url(sidecar), document(100 + i)) for i in range(20))
        )
    assert [status for status, _ in results] == [202] * 20
    stats = moex.registration.stats()
    assert stats["rate_limited"] == 0 and stats["accepted"] == 20
    arrivals = sorted(stats["arrivals"])
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Released once a second by the sidecar; a few ms of scheduling jitter at most.
    assert min(gaps) > 0.97, gaps


async def test_late_registrations_get_the_sidecars_429(
    moex: MoexStack, make_sidecar: SidecarFactory, moex_config: dict[str, Any]
) -> None:
    moex_config["rate_limit"]["max_wait"] = 2
    sidecar = await make_sidecar(upstreams={"registration": moex_config})
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(_post(session, proxy_url(sidecar), document(200 + i)) for i in range(20))
        )
    statuses = [status for status, _ in results]
    # Waits of 0 s and ~1.02 s fit in max_wait 2; the third would wait ~2.04 s.
    assert statuses.count(202) == 2 and statuses.count(429) == 18
    assert time.monotonic() - started < 5
    for status, (_, retry_after, body) in results:
        if status == 429:
            assert int(retry_after) >= 2 and b'"rate_limited"' in body
    assert moex.registration.stats()["rate_limited"] == 0


async def test_upstream_429_pauses_and_idempotent_requests_retry_once(
    moex: MoexStack, make_sidecar: SidecarFactory, moex_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registration, "RETRY_AFTER", 1)  # MOEX says 30 s; keep the test short
    moex_config["rate_limit"] = {"rps": 20, "burst": 5, "max_wait": 5}  # faster than MOEX
    moex_config["retry_on_429"] = True
    sidecar = await make_sidecar(upstreams={"registration": moex_config})
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, proxy_url(sidecar), document(300)))[0] == 202
        # A GET right after the POST is over MOEX's 1/s: its 429 pauses the queue, then the
        # GET is retried once and succeeds.
        async with session.get(f"{APPLICATIONS}2026-11-20/300", proxy=proxy_url(sidecar)) as resp:
            assert resp.status == 200
            # The status is in the registration file format (XML), the number on its root.
            assert ET.fromstring(await resp.read()).get("DOC_NUM") == "300"
        # A POST is not idempotent: its 429 goes back to the app as it came.
        await asyncio.sleep(1.1)  # MOEX's window after the retried GET
        statuses = [await _post(session, proxy_url(sidecar), document(301 + i)) for i in range(2)]
    assert statuses[0][0] == 202 and statuses[1][0] == 429
    assert statuses[1][1][1] == "1"


async def test_outside_business_hours_503_passes_through(
    moex: MoexStack, make_sidecar: SidecarFactory, moex_config: dict[str, Any]
) -> None:
    moex.registration.set_clock(datetime(2026, 11, 20, 17, 30, tzinfo=MSK))
    sidecar = await make_sidecar(upstreams={"registration": moex_config})
    async with aiohttp.ClientSession() as session:
        status, (_, retry_after, body) = await _post(session, proxy_url(sidecar), document(400))
    assert status == 503 and retry_after is None
    assert b"11:00" in body and b"no_token" not in body  # MOEX's own answer, untouched


async def test_body_over_one_megabyte_is_refused_before_sending(
    moex: MoexStack, make_sidecar: SidecarFactory, moex_config: dict[str, Any]
) -> None:
    sidecar = await make_sidecar(upstreams={"registration": moex_config})
    moex.registration.reset_stats()
    async with aiohttp.ClientSession() as session:
        status, (_, _, body) = await _post(session, proxy_url(sidecar), b"<a>" + b"x" * 1_100_000)
    assert status == 413 and b"body_too_large" in body
    assert moex.registration.stats()["arrivals"] == []


@pytest.mark.parametrize("behaviour", ["hangs", "fails"])
async def test_a_hanging_or_failing_signer_gives_503_not_a_hang(
    moex: MoexStack, make_sidecar: SidecarFactory, moex_config: dict[str, Any], behaviour: str
) -> None:
    code = "import time; time.sleep(60)" if behaviour == "hangs" else (
        "import sys; sys.stderr.write('container not found'); sys.exit(4)")
    moex_config["auth"]["signer"] = {
        "type": "command", "command": {"argv": [sys.executable, "-c", code], "timeout": 1},
    }
    moex_config["timeouts"] = {"token_wait": 3}
    sidecar = await make_sidecar(upstreams={"registration": moex_config})
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        status, (_, retry_after, body) = await _post(session, proxy_url(sidecar), document(500))
    assert status == 503 and retry_after is not None
    assert time.monotonic() - started < 3.5
    expected = b"did not finish within 1 s" if behaviour == "hangs" else b"exited 4"
    assert b"signing the Passport token failed" in body and expected in body
    assert moex.registration.stats()["arrivals"] == []


async def test_a_slow_relogin_does_not_release_the_queue_at_once(
    sandbox: SandboxStack, moex: MoexStack, make_sidecar: SidecarFactory,
    moex_config: dict[str, Any],
) -> None:
    sidecar = await make_sidecar(upstreams={"registration": moex_config})
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, proxy_url(sidecar), document(600)))[0] == 202
        await asyncio.sleep(1.1)
        moex.registration.reset_stats()
        sandbox.idp.revoke_sessions()  # the token dies...
        moex.passport.hang(True)  # ...and the new login takes seconds
        posts = [asyncio.create_task(_post(session, proxy_url(sidecar), document(610 + i)))
                 for i in range(4)]
        await asyncio.sleep(3)
        moex.passport.hang(False)
        results = await asyncio.gather(*posts)
    assert [status for status, _ in results] == [202] * 4
    stats = moex.registration.stats()
    gaps = [b - a for a, b in itertools.pairwise(sorted(stats["arrivals"]))]
    assert stats["rate_limited"] == 0 and min(gaps) > 0.97, gaps
