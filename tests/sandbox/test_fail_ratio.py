"""Random failures in the sandbox: a share of an emulator's calls fail, from Python or over
``/_sandbox/fail?ratio=…``, with a seed that makes a run repeatable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.sandbox.controls import FaultControls
from sidecar.sandbox.keycloak import KeycloakEmulator
from sidecar.sandbox.mpt import MptApi
from sidecar.sandbox.passport import MoexPassport
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.wso2 import Wso2Gateway

LOGIN = {"grant_type": "password", "username": "trader", "password": "trader-password",
         "client_id": "LK_NTB_PUBLIC"}


def _draw(controls: FaultControls, calls: int) -> list[int | None]:
    """The status of each of ``calls`` calls: the injected one, or None when it went through."""
    out: list[int | None] = []
    for _ in range(calls):
        answer = controls.take_failure(lambda status: web.Response(status=status))
        out.append(None if answer is None else answer.status)
    return out


def test_ratio_fails_about_that_share_and_a_seed_repeats_the_run() -> None:
    controls = FaultControls()
    controls.fail_randomly(0.2, seed=7)
    first = _draw(controls, 2000)
    failed = sum(status is not None for status in first)
    assert 300 <= failed <= 500, failed  # 400 expected; 5 standard deviations is ±90
    assert set(first) == {None, 503}
    assert controls.injected == failed
    controls.fail_randomly(0.2, seed=7)
    assert _draw(controls, 2000) == first
    controls.fail_randomly(0.2, seed=8)
    assert _draw(controls, 2000) != first


def test_ratio_edges_and_counted_failures_first() -> None:
    controls = FaultControls()
    controls.fail_randomly(1.0, 500)
    assert _draw(controls, 5) == [500] * 5
    controls.fail_with(429, 2)  # counted failures come before random ones
    assert _draw(controls, 3) == [429, 429, 500]
    controls.fail_randomly(0.0)
    assert _draw(controls, 50) == [None] * 50
    assert (controls.injected, controls.calls) == (8, 58)
    for ratio, status in ((1.5, 503), (-0.1, 503), (float("nan"), 503), (0.5, 200)):
        with pytest.raises(ValueError):
            controls.fail_randomly(ratio, status)


@pytest.fixture
async def keycloak() -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(KeycloakEmulator().app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_http_control_sets_shows_and_clears_the_ratio(keycloak: TestClient) -> None:
    token_path = "/auth/realms/SSO/protocol/openid-connect/token"
    resp = await keycloak.post("/_sandbox/fail", params={"ratio": "0.5", "seed": "3"})
    assert await resp.json() == {"status": None, "count": None, "ratio": 0.5,
                                 "ratio_status": 503, "seed": 3}
    statuses = [(await keycloak.post(token_path, data=LOGIN)).status for _ in range(40)]
    assert set(statuses) == {200, 503}
    state = await (await keycloak.get("/_sandbox/fail")).json()
    assert state["injected"] == statuses.count(503) and state["ratio"] == 0.5
    assert state["calls"] == 40

    # The same seed again: the same calls fail.
    await keycloak.post("/_sandbox/fail", params={"ratio": "0.5", "seed": "3"})
    again = [(await keycloak.post(token_path, data=LOGIN)).status for _ in range(40)]
    assert again == statuses

    resp = await keycloak.post("/_sandbox/fail", params={"ratio": "1", "status": "429"})
    assert (await resp.json())["ratio_status"] == 429
    assert (await keycloak.post(token_path, data=LOGIN)).status == 429
    resp = await keycloak.post("/_sandbox/fail")  # no status, no ratio: clears both
    assert await resp.json() == {"status": None, "count": None}
    assert all([(await keycloak.post(token_path, data=LOGIN)).status == 200 for _ in range(10)])
    for bad in ({"ratio": "2"}, {"ratio": "x"}, {"ratio": "0.5", "seed": "x"},
                {"ratio": "0.5", "status": "200"}):
        assert (await keycloak.post("/_sandbox/fail", params=bad)).status == 400


@pytest.mark.parametrize("emulator", ["wso2", "passport", "mpt-key", "mpt-signin"])
async def test_every_idp_emulator_fails_its_auth_calls_at_random(
    emulator: str, tmp_path: Path
) -> None:
    app: web.Application
    if emulator == "wso2":
        gateway = Wso2Gateway()
        controls, app, call = gateway.controls, gateway.app, ("POST", "/token")
    elif emulator == "passport":
        passport = MoexPassport()
        controls, app, call = passport.controls, passport.app, ("GET", "/authenticate")
    else:
        mpt = MptApi(Pki(tmp_path / "pki").ca_file)
        path = mpt.key_path if emulator == "mpt-key" else mpt.signin_path
        method = "GET" if emulator == "mpt-key" else "POST"
        controls, app, call = mpt.controls, mpt.app, (method, path)
    controls.fail_randomly(1.0, 502, seed=1)
    async with TestClient(TestServer(app)) as client:
        resp = await client.request(*call, json={} if call[0] == "POST" else None)
        assert resp.status == 502
        controls.fail_randomly(0.0)
        resp = await client.request(*call, json={} if call[0] == "POST" else None)
        assert resp.status != 502
    assert controls.injected == 1
