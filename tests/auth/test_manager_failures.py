"""Token manager rules for failures: which refresh failures lead to a full login, and how
long a refused login waits. Against the scripted flow of test_manager."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from sidecar.auth.base import AuthError, Failure, Grant, InvalidGrant, NoToken
from sidecar.auth.manager import TokenManager
from tests.helpers.flows import ScriptedFlow, manager


def refused(status: int, reason: str = "refused") -> AuthError:
    return AuthError.answered(status, f"IdP answered {status}: {reason}")


UNAVAILABLE = AuthError("IdP x: cannot connect (Connection refused)", kind=Failure.UNAVAILABLE)


@pytest.mark.parametrize(
    "error",
    [
        refused(403),  # MOEX answers 403 for everything it rejects
        refused(401, "invalid_client"),
        AuthError.answered(400, "IdP answered 400 with a non-JSON body"),
        InvalidGrant("IdP answered 400 invalid_grant", kind=Failure.REFUSED, status=400),
    ],
    ids=["403", "401-invalid_client", "400-non-json", "invalid_grant"],
)
async def test_a_refused_refresh_is_followed_by_a_login_at_once(
    managers: list[TokenManager], error: AuthError
) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant(f"a{n}", 2, "r", 1800)

    async def refresh(_: str) -> Grant:
        flow.calls.append("refresh")
        raise error

    flow.refresh = refresh  # type: ignore[method-assign]
    m = manager(managers, flow)
    first = await m.get()
    await asyncio.sleep(1.4)  # renewal at 1 s left: one refresh, refused, then a login
    assert flow.calls[:3] == ["login", "refresh", "login"], flow.calls
    assert m.status()["consecutive_failures"] == 0
    assert (await m.get()).value != first.value


async def test_refreshes_failing_on_the_way_twice_lead_to_a_login(
    managers: list[TokenManager],
) -> None:
    flow = ScriptedFlow()
    flow.login_answer = lambda n: Grant(f"a{n}", 3, "r", 1800)

    async def refresh(_: str) -> Grant:
        flow.calls.append("refresh")
        raise UNAVAILABLE

    flow.refresh = refresh  # type: ignore[method-assign]
    m = manager(managers, flow, backoff_cap=0.5)
    await m.get()
    await asyncio.sleep(2.9)  # renewal at 1.5 s left; retries 0.5 s apart
    assert flow.calls[:4] == ["login", "refresh", "refresh", "login"], flow.calls
    # After the login the refresh token is used again (it is the new session's).
    assert m.status()["consecutive_failures"] == 0


async def test_a_refused_login_waits_long_and_says_so(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.fail_with = refused(401, "invalid_grant: Invalid user credentials")
    m = manager(managers, flow, backoff_cap=0.5, refused_backoff=1.5, refused_backoff_cap=3)
    with pytest.raises(NoToken):
        await m.get()
    status = m.status()
    assert status["credentials_refused"] is True
    assert isinstance(status["next_attempt_in"], float) and status["next_attempt_in"] > 1.0
    # During the wait a request is answered at once, with the reason and when it ends.
    started = time.monotonic()
    with pytest.raises(NoToken) as caught:
        await m.get()
    assert time.monotonic() - started < 0.5
    assert "refused the credentials" in caught.value.reason
    assert caught.value.retry_after >= 1
    await asyncio.sleep(1.0)
    assert flow.calls == ["login"]  # still waiting: no second attempt yet


async def test_login_attempts_per_interval_refused_versus_unavailable(
    managers: list[TokenManager],
) -> None:
    """The account-locking case: with the same short transient backoff, a refused login is
    tried far less often than one that fails on the way."""
    counts = {}
    for name, error in (("refused", refused(401, "invalid_grant")), ("down", UNAVAILABLE)):
        flow = ScriptedFlow()
        flow.fail_with = error
        m = manager(managers, flow, backoff_cap=0.5, refused_backoff=2.0, refused_backoff_cap=8)
        await m.start()
        await asyncio.sleep(3.0)
        counts[name] = len(flow.calls)
        await m.close()
    assert counts["refused"] <= 2, counts  # at 0 s and at 2-2.2 s
    assert counts["down"] >= 4, counts  # every 0.5 s or so


async def test_refused_wait_doubles_to_its_cap(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    m = manager(managers, flow, refused_backoff=30, refused_backoff_cap=600)
    m._calling = "login"
    waits = []
    for _ in range(8):
        m._fail(refused(401, "invalid_grant"))
        waits.append(m._retry_at - time.monotonic())
    assert 29 < waits[0] <= 33 and 59 < waits[1] <= 66
    assert all(later >= earlier * 0.9 for earlier, later in itertools.pairwise(waits))
    assert 590 < waits[-1] <= 600


async def test_a_transient_failure_after_a_refusal_keeps_the_short_backoff(
    managers: list[TokenManager],
) -> None:
    flow = ScriptedFlow()
    m = manager(managers, flow, backoff_cap=5, refused_backoff=30)
    m._calling = "login"
    m._fail(refused(403))
    m._fail(UNAVAILABLE)
    assert m._retry_at - time.monotonic() <= 5


async def test_new_tls_files_end_the_refused_wait(managers: list[TokenManager]) -> None:
    flow = ScriptedFlow()
    flow.fail_with = refused(403, "client certificate not accepted")
    m = manager(managers, flow, refused_backoff=60)
    with pytest.raises(NoToken):
        await m.get()
    flow.fail_with = None
    m.renew_tls(None)  # type: ignore[arg-type]
    token = await m.get()
    assert token.value.startswith("access-")
    assert flow.calls == ["login", "login"]
    assert m.status()["credentials_refused"] is False
