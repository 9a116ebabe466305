"""The token manager: one cached token per upstream, kept fresh by one background task.

Rules (DESIGN.md, "Token manager rules"):
- renew ahead of expiry, when the time left falls to min(max(20 % of lifetime, 30 s), 50 %);
  with the refresh token while it lives, else by a full login;
- single flight: only the background task talks to the IdP, so the IdP sees one call at a time;
- on failure keep the old token while it is valid and back off (0.5 s doubling to a cap, with
  jitter); a waiting request gets the outcome of the current or next attempt, never a hang;
- a token the upstream rejected is dropped only if it is still the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from sidecar import logs
from sidecar.auth.base import (
    MAX_LIFETIME,
    AuthError,
    AuthFlow,
    Failure,
    Grant,
    InvalidGrant,
    NoToken,
    Token,
    TokenEvents,
)
from sidecar.auth.jwt import expiry as jwt_expiry
from sidecar.store.base import Coordinator, LocalCoordinator, SharedToken

log = structlog.get_logger("sidecar.auth")

DEFAULT_LIFETIME = 300.0  # when the IdP states no expires_in and the token is not a JWT
MIN_RENEWAL_GAP = 0.5  # two successful renewals are never closer than this: no busy loop
MIN_ATTEMPT_GAP = 0.5  # nor are any two IdP attempts, whatever the IdP answers


def renew_ahead(lifetime: float) -> float:
    """How long before expiry to renew: a 300 s token at 60 s left, a 2 s token at 1 s left."""
    return min(max(0.2 * lifetime, 30.0), 0.5 * lifetime)


def usable_margin(lifetime: float) -> float:
    """A token is not sent in its last second (DESIGN), or last half for tokens under 2 s."""
    return min(1.0, 0.5 * lifetime)


class TokenManager:
    def __init__(
        self,
        upstream: str,
        flow: AuthFlow,
        *,
        token_wait: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_cap: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        events: TokenEvents | None = None,
        shared: Coordinator | None = None,
    ) -> None:
        self.upstream = upstream
        # Replicas sharing this credential (the store): who logs in, and the shared token.
        self._shared: Coordinator = shared or LocalCoordinator()
        self._events = events
        self._flow = flow
        self._token_wait = token_wait
        self._backoff_initial = backoff_initial
        self._backoff_cap = max(backoff_cap, backoff_initial)
        self._clock = clock
        self._log = log.bind(upstream=upstream)

        self._token: Token | None = None
        self._refresh_token: str | None = None
        self._refresh_deadline: float | None = None
        self._renew_at = 0.0
        self._last_attempt = -math.inf
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: str | None = None
        self._last_success: float | None = None  # wall clock, for /status
        self._wake = asyncio.Event()
        self._outcome: asyncio.Future[Token] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the request path ------------------------------------------------------------------

    def peek(self) -> Token | None:
        token = self._token
        if token is not None and token.usable(self._clock()):
            return token
        return None

    async def get(self) -> Token:
        token = self._token
        if token is not None and token.usable(self._clock()):
            return token
        await self.start()
        outcome = self._pending_outcome()
        self._wake.set()  # no usable token: act now (a running backoff still holds)
        try:
            return await asyncio.wait_for(asyncio.shield(outcome), self._token_wait)
        except TimeoutError:
            reason = f"no token within {self._token_wait:g} s"
            if self._last_error:
                reason += f"; last error: {self._last_error}"
            raise NoToken(reason, self._retry_after()) from None
        except AuthError as exc:
            raise NoToken(exc.reason, self._retry_after()) from None

    def invalidate(self, token: Token) -> None:
        if self._token is token:
            self._log.info("token_rejected_by_upstream")
            self._token = None
            self._shared.rejected(token.value)
            self._wake.set()

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        self._flow.renew_tls(ssl_context)

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._shared.attach(self._adopt, self._shared_view)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"token-manager-{self.upstream}"
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(
                AuthError("sidecar is shutting down", kind=Failure.LOCAL)
            )
            self._outcome.exception()
        self._shared.close()
        await self._flow.close()

    @property
    def ready(self) -> bool:
        return self._token is not None and self._token.usable(self._clock())

    def status(self) -> dict[str, object]:
        now = self._clock()
        token = self._token
        state = "valid" if self.ready else ("failing" if self._failures else "none")
        return {
            "state": state,
            "expires_in": round(token.expires_at - now, 1) if token else None,
            "renew_in": round(max(0.0, self._renew_at - now), 1) if token else None,
            "last_success": (
                datetime.fromtimestamp(self._last_success, UTC).isoformat()
                if self._last_success
                else None
            ),
            "last_error": self._last_error,
            "consecutive_failures": self._failures,
        }

    # -- the background task ---------------------------------------------------------------

    def _pending_outcome(self) -> asyncio.Future[Token]:
        if self._outcome is None:
            self._outcome = asyncio.get_running_loop().create_future()
        return self._outcome

    def _due(self, now: float) -> float:
        # However the IdP answers, two attempts are never closer than MIN_ATTEMPT_GAP.
        floor = self._last_attempt + MIN_ATTEMPT_GAP
        if self._failures and now < self._retry_at:
            return max(self._retry_at, floor)
        if self._token is None or not self._token.usable(now):
            return max(now, floor)
        return max(self._renew_at, floor)

    async def _run(self) -> None:
        while True:
            try:
                self._wake.clear()
                now = self._clock()
                due = self._due(now)
                if due > now:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), due - now)
                    continue
                self._last_attempt = now
                await self._attempt()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any bug: a dead loop is a dead pod
                self._log.exception("token_loop_error")
                await asyncio.sleep(1.0)

    async def _attempt(self) -> None:
        # The store's seam: adopt another replica's token, wait for it, or lead (with the
        # shared refresh token) and publish what came of it.
        turn = await self._shared.begin()
        if turn.adopt is not None:
            self._adopt(turn.adopt)
            return
        if turn.busy:
            self._fail(AuthError(
                "another replica is renewing the token and has not finished yet",
                kind=Failure.UNAVAILABLE,
            ))
            return
        if turn.refresh is not None:
            refresh, deadline = turn.refresh
            self._refresh_token = refresh
            self._refresh_deadline = self._from_unix(deadline) if deadline else None
        try:
            await self._attempt_alone()
        finally:
            await turn.finish(self._shared_view())

    def _from_unix(self, unix: float) -> float:
        return self._clock() + (unix - time.time())

    def _to_unix(self, deadline: float) -> float:
        return time.time() + (deadline - self._clock())

    def _adopt(self, shared: SharedToken) -> None:
        """Take the token another replica obtained (and its refresh token, used only if
        this replica later holds the lease, or is alone because the store is down)."""
        if not shared.access_token:
            return
        if self._token is not None and self._token.value == shared.access_token:
            token = self._token  # the same one: keep its identity (invalidate compares it)
        else:
            token = Token(shared.access_token, self._from_unix(shared.expires_at),
                          margin=usable_margin(shared.lifetime))
        if not token.usable(self._clock()):
            return
        logs.secrets.add(shared.access_token, dynamic=True)
        if shared.refresh_token:
            logs.secrets.add(shared.refresh_token, dynamic=True)
        self._refresh_token = shared.refresh_token
        self._refresh_deadline = (
            self._from_unix(shared.refresh_deadline) if shared.refresh_deadline else None
        )
        self._renew_at = max(self._from_unix(shared.renew_at), self._clock() + MIN_RENEWAL_GAP)
        if token is not self._token:
            self._log.info("token_adopted", expires_in=round(token.expires_at - self._clock(), 1))
        self._settle(token)
        self._wake.set()  # the renewal time moved

    def _shared_view(self) -> SharedToken | None:
        """This manager's state as the store shares it (Unix times)."""
        refresh_deadline = (
            self._to_unix(self._refresh_deadline) if self._refresh_deadline else None
        )
        token = self._token
        if token is None:
            if self._refresh_token is None:
                return None
            return SharedToken(None, 0.0, 0.0, 0.0, self._refresh_token, refresh_deadline)
        return SharedToken(
            access_token=token.value,
            expires_at=self._to_unix(token.expires_at),
            lifetime=max(token.expires_at - token.obtained_at, 0.0),
            renew_at=self._to_unix(self._renew_at),
            refresh_token=self._refresh_token,
            refresh_deadline=refresh_deadline,
        )

    async def _attempt_alone(self) -> None:
        sent_at = self._clock()
        try:
            grant, how = await self._obtain(sent_at)
            token = self._accept(grant, sent_at)
        except AuthError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # a bug must not kill the loop: report it like an IdP error
            self._log.exception("token_attempt_crashed")
            self._fail(AuthError(f"internal error: {type(exc).__name__}", kind=Failure.LOCAL))
            return
        self._log.info(
            "token_obtained", grant=how, expires_in=round(token.expires_at - sent_at, 1)
        )
        self._settle(token)

    async def _obtain(self, now: float) -> tuple[Grant, str]:
        refresh = self._refresh_token
        if refresh and (self._refresh_deadline is None or now < self._refresh_deadline - 1.0):
            try:
                return await self._timed("refresh_token", self._flow.refresh(refresh))
            except InvalidGrant as exc:
                # Never retry a rejected refresh token (Keycloak would kill the session).
                self._log.info("refresh_token_rejected", reason=exc.reason)
                self._refresh_token = None
        return await self._timed(self._flow.grant_type, self._flow.login())

    async def _timed(self, grant: str, call: Awaitable[Grant]) -> tuple[Grant, str]:
        started = self._clock()
        ok = False
        try:
            result = await call
            ok = True
            return result, grant
        finally:
            if self._events is not None:
                self._events.token_fetched(grant, ok, self._clock() - started)

    def _accept(self, grant: Grant, sent_at: float) -> Token:
        if grant.refresh_token:
            # Kept first: a rotated refresh token is the only valid one now, even if the access
            # token below turns out unusable.
            logs.secrets.add(grant.refresh_token, dynamic=True)
            self._refresh_token = grant.refresh_token
            expires = grant.refresh_expires_in
            self._refresh_deadline = sent_at + expires if expires else None
        lifetime = grant.expires_in
        if lifetime is None:
            exp = jwt_expiry(grant.access_token)
            lifetime = exp - time.time() if exp is not None else DEFAULT_LIFETIME
            if lifetime <= 0:
                raise AuthError("IdP issued a token that has already expired")
        if not lifetime > 0:  # NaN as well: no deadline can be planned from it
            raise AuthError(f"IdP issued a token with an unusable lifetime ({lifetime:g} s)")
        # However far off the IdP puts expiry (a JWT exp in the year 3000, an infinite one), the
        # token is renewed within a day: an unbounded lifetime would mean never renewing ahead.
        lifetime = min(lifetime, MAX_LIFETIME)
        token = Token(grant.access_token, sent_at + lifetime, margin=usable_margin(lifetime))
        if not token.usable(self._clock()):
            raise AuthError(
                f"IdP issued a token that expired before it could be used "
                f"(lifetime {lifetime:g} s, the call took {self._clock() - sent_at:.2f} s)"
            )
        previous = self._token
        renew_at = token.expires_at - renew_ahead(lifetime)
        if previous is not None and token.expires_at <= previous.expires_at + 0.001:
            # The IdP handed back a token that lives no longer than the one we had (WSO2 does
            # this on a repeated login): renewing early again would only loop. Wait it out.
            renew_at = token.expires_at - token.margin
        self._renew_at = max(renew_at, self._clock() + min(MIN_RENEWAL_GAP, lifetime / 2))
        logs.secrets.add(grant.access_token, dynamic=True)
        return token

    def _settle(self, token: Token) -> None:
        self._token = token
        self._failures = 0
        self._last_error = None
        self._last_success = time.time()
        self._report()
        outcome, self._outcome = self._outcome, None
        if outcome is not None and not outcome.done():
            outcome.set_result(token)

    def _fail(self, exc: AuthError) -> None:
        if exc.refresh_token:
            # The IdP rotated the refresh token even though the answer was unusable: the old
            # one is spent, so keep the new one for the next attempt.
            self._refresh_token = exc.refresh_token
        self._failures += 1
        doublings = min(self._failures - 1, 30)  # 2**1024 would overflow a float
        delay = min(self._backoff_cap, self._backoff_initial * 2**doublings)
        delay *= random.uniform(0.8, 1.0)  # jitter: pods that failed together spread out
        if exc.retry_after:
            delay = max(delay, min(exc.retry_after, 60.0))
        self._retry_at = self._clock() + delay
        self._last_error = exc.reason
        self._report()
        self._log.warning(
            "token_fetch_failed",
            reason=exc.reason,
            consecutive_failures=self._failures,
            retry_in=round(delay, 2),
            serving_old_token=self.ready,
        )
        outcome, self._outcome = self._outcome, None
        if outcome is not None and not outcome.done():
            outcome.set_exception(exc)
            outcome.exception()  # waiters may have gone; do not warn about it

    def _report(self) -> None:
        if self._events is not None:
            token = self._token
            expiry = time.time() + (token.expires_at - self._clock()) if token else 0.0
            self._events.token_state(expiry, self._failures)

    def _retry_after(self) -> float:
        return max(1.0, math.ceil(self._retry_at - self._clock()))
