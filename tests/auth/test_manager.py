"""Token manager rules, against a scripted flow whose calls and overlaps are counted."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from sidecar.auth.base import AuthError, Grant, NoToken
from sidecar.auth.manager import TokenManager, renew_ahead
from tests.helpers.flows import ScriptedFlow, manager


def test_renew_ahead_matches_design() -> None:
    assert renew_ahead(300) == 60
    assert renew_ahead(2) == 1
    assert renew_ahead(1800) == 360
    assert renew_ahead(100) == 30


async def test_many_waiters_one_login(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow(latency=0.1)
    m = manager(managers, flow)
    tokens = await asyncio.gather(*(m.get() for _ in range(200)))
    assert {t.value for t in tokens} == {"access-1"}
    assert flow.calls == ["login"]


async def test_refreshes_ahead_of_expiry_with_refresh_token(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant(f"a{n}", 2, "r", 60)
    flow.refresh_answer = lambda n: Grant(f"a{n}", 2, f"r{n}", 60)
    m = manager(managers, flow)
    first = await m.get()
    await asyncio.sleep(2.6)  # a 2 s token is renewed at 1 s left: twice in 2.6 s
    assert flow.calls[:3] == ["login", "refresh", "refresh"]
    assert len(flow.calls) <= 4
    current = await m.get()
    assert current is not first and current.value != first.value


async def test_invalid_grant_on_refresh_falls_back_to_login(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant(f"a{n}", 2, "r", 60)
    flow.refresh_answer = None  # every refresh: invalid_grant
    m = manager(managers, flow)
    await m.get()
    await asyncio.sleep(1.3)
    assert flow.calls[:3] == ["login", "refresh", "login"]
    assert flow.max_in_flight == 1


async def test_expired_refresh_token_goes_straight_to_login(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant(f"a{n}", 2, "r", 1)  # refresh token dies before renewal
    flow.refresh_answer = lambda n: Grant(f"a{n}", 2, "r", 1)
    m = manager(managers, flow)
    await m.get()
    await asyncio.sleep(1.3)
    assert flow.calls[:2] == ["login", "login"]


async def test_failure_keeps_valid_token_and_backs_off(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant(f"a{n}", 4, None, None)
    m = manager(managers, flow, backoff_cap=1.0)
    token = await m.get()
    flow.fail_with = AuthError("IdP answered 500")
    await asyncio.sleep(2.9)  # renewal starts at 2 s; failures back off 0.5, 1, 1 ...
    assert await m.get() is token  # the old token is still served while valid
    attempts = len(flow.calls) - 1
    assert 1 <= attempts <= 3, flow.calls
    assert m.status()["consecutive_failures"] == attempts
    assert m.status()["last_error"] == "IdP answered 500"


async def test_no_valid_token_and_idp_failing_gives_fast_503(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.fail_with = AuthError("IdP x: cannot connect (Connection refused)")
    m = manager(managers, flow, token_wait=5, backoff_cap=5)
    started = time.monotonic()
    with pytest.raises(NoToken) as caught:
        await m.get()
    assert time.monotonic() - started < 0.5
    assert "Connection refused" in caught.value.reason
    assert caught.value.retry_after >= 1
    # 100 more requests during the backoff wait for the *next* attempt: the IdP sees one call.
    results = await asyncio.gather(*(m.get() for _ in range(100)), return_exceptions=True)
    assert all(isinstance(r, NoToken) for r in results)
    assert len(flow.calls) == 2


async def test_wait_is_bounded_when_idp_hangs(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow(latency=30)
    m = manager(managers, flow, token_wait=0.5)
    started = time.monotonic()
    with pytest.raises(NoToken) as caught:
        await m.get()
    assert 0.4 < time.monotonic() - started < 1.5
    assert "no token within 0.5 s" in caught.value.reason


async def test_recovers_after_idp_comes_back(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.fail_with = AuthError("down")
    m = manager(managers, flow, backoff_cap=0.5, token_wait=3)
    with pytest.raises(NoToken):
        await m.get()
    flow.fail_with = None
    token = await m.get()  # waits for the next attempt after the backoff
    assert token.value.startswith("access-")
    assert m.ready


async def test_invalidate_drops_only_the_current_token(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.refresh_answer = lambda n: Grant(f"access-{n}", 300, f"r-{n}", 1800)
    m = manager(managers, flow)
    old = await m.get()
    m.invalidate(old)
    new = await m.get()
    assert new is not old
    m.invalidate(old)  # a late 401 for the old token must not drop the new one
    assert await m.get() is new
    assert flow.calls == ["login", "refresh"]


async def test_same_expiry_token_does_not_loop(managers: list[TokenManager]) -> None:
    """WSO2 hands back the same token with less time left: no renewal storm."""
    flow = ScriptedFlow()
    deadline = time.monotonic() + 3

    def same_token(_: int) -> Grant:
        return Grant("same", max(0.1, deadline - time.monotonic()), None, None)

    flow.login_answer = same_token
    m = manager(managers, flow)
    await m.get()
    await asyncio.sleep(2.5)
    # Renewal at 1.5 s left gets the same deadline back; the next try waits for expiry.
    assert len(flow.calls) <= 3, flow.calls


async def test_zero_lifetime_answers_are_failures_not_loops(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant("jwt-less", None, None, None)
    m = manager(managers, flow)
    token = await m.get()
    # No expires_in and not a JWT: a default lifetime applies; no immediate renewal.
    await asyncio.sleep(0.3)
    assert flow.calls == ["login"]
    assert token.expires_at - time.monotonic() > 200


async def test_backoff_survives_a_very_long_outage(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    m = manager(managers, flow, backoff_cap=5)
    m._failures = 5000  # a day and more of failures: the doubling must not overflow
    m._fail(AuthError("still down"))
    assert m.status()["consecutive_failures"] == 5001
    assert 0 < m._retry_after() <= 5


async def test_token_dead_on_arrival_is_a_failure_not_a_loop(
    managers: list[TokenManager],
) -> None:
    flow = ScriptedFlow(latency=0.8)
    flow.login_answer = lambda n: Grant(f"a{n}", 1, None, None)  # 1 s token, 0.8 s to get it
    m = manager(managers, flow, backoff_cap=1, token_wait=0.5)
    with pytest.raises(NoToken) as caught:
        await m.get()
    await asyncio.sleep(3)
    assert "expired before it could be used" in (m.status()["last_error"] or caught.value.reason)
    assert len(flow.calls) <= 4, flow.calls


async def test_tiny_lifetimes_cannot_make_the_loop_spin(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant(f"a{n}", 0.01, None, None)
    m = manager(managers, flow, token_wait=0.2)
    with contextlib.suppress(NoToken):
        await m.get()
    await asyncio.sleep(2)
    assert len(flow.calls) <= 5, len(flow.calls)  # at most one attempt per 0.5 s


async def test_rotated_refresh_token_is_kept_from_an_unusable_answer(
    managers: list[TokenManager],
) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant("a1", 2, "r-first", 60)
    used: list[str] = []

    async def refresh(token: str) -> Grant:
        used.append(token)
        if len(used) == 1:  # rotated, but the access token part is unusable
            raise AuthError("IdP answered an unusable expires_in: 0", refresh_token="r-second")
        return Grant("a2", 300, "r-third", 60)

    flow.refresh = refresh  # type: ignore[method-assign]
    m = manager(managers, flow, backoff_cap=0.5)
    await m.get()
    await asyncio.sleep(2.5)
    assert used[:2] == ["r-first", "r-second"]


@pytest.mark.parametrize("lifetime", [float("inf"), 1e12, 10 * 365 * 86400.0])
async def test_far_off_expiry_is_renewed_within_a_day(
    managers: list[TokenManager], lifetime: float
) -> None:
    # MPT takes lifetimes from a JWT exp, and a missing expires_in falls back to the JWT too:
    # neither passes through the OAuth clamp, so the manager bounds every lifetime itself.
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant(f"a{n}", lifetime, None, None)
    m = manager(managers, flow)
    token = await m.get()
    await asyncio.sleep(0.6)
    status = m.status()
    assert flow.calls == ["login"]
    assert token.expires_at - time.monotonic() <= 24 * 3600
    assert isinstance(status["renew_in"], float) and 0 < status["renew_in"] < 24 * 3600


async def test_nan_lifetime_is_a_failure_not_a_token(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant(f"a{n}", float("nan"), None, None)
    m = manager(managers, flow, token_wait=0.5)
    with pytest.raises(NoToken) as caught:
        await m.get()
    assert "unusable lifetime" in caught.value.reason
