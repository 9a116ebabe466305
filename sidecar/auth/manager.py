"""The token manager: one cached token per upstream, kept fresh by one background task.

Rules (the README's "Tokens" paragraph says them for users):
- renew ahead of expiry, when the time left falls to min(max(20 % of lifetime, 30 s), 50 %);
  with the refresh token while it lives, else by a full login;
- a refresh the IdP refuses (any 4xx) is never retried: a full login follows at once; a
  refresh that failed on the way (5xx, 429, network, timeout) is retried with backoff, and
  after two such failures in a row the next attempt is a full login;
- single flight: only the background task talks to the IdP, so the IdP sees one call at a time;
- on failure keep the old token while it is valid and back off (0.5 s doubling to a cap, with
  jitter); a waiting request gets the outcome of the current or next attempt, never a hang;
- a full login whose credentials the IdP refused (a 4xx) waits ``auth.refused_backoff``
  (30 s), doubling up to ``auth.refused_backoff_cap`` (10 min): retrying cannot fix a wrong
  password, and IdPs lock accounts that keep trying; new TLS files (a reload) end that wait;
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
from sidecar.auth.shared_state import SharedState
from sidecar.auth.timing import MIN_RENEWAL_GAP, renew_ahead, usable_margin
from sidecar.store.base import Coordinator, LocalCoordinator

log = structlog.get_logger("sidecar.auth")

DEFAULT_LIFETIME = 300.0  # when the IdP states no expires_in and the token is not a JWT
MIN_ATTEMPT_GAP = 0.5  # nor are any two IdP attempts, whatever the IdP answers
REFRESH_FAILURES_BEFORE_LOGIN = 2  # refreshes failed on the way in a row; then a full login
REFUSED_BACKOFF = 30.0  # first wait after the IdP refused the credentials of a full login
REFUSED_BACKOFF_CAP = 600.0  # ... doubling up to this


class TokenManager(SharedState):
    def __init__(
        self,
        upstream: str,
        flow: AuthFlow,
        *,
        token_wait: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_cap: float = 5.0,
        refused_backoff: float | None = None,  # None: REFUSED_BACKOFF
        refused_backoff_cap: float | None = None,  # None: REFUSED_BACKOFF_CAP
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
        self._refused_initial = REFUSED_BACKOFF if refused_backoff is None else refused_backoff
        self._refused_cap = max(
            REFUSED_BACKOFF_CAP if refused_backoff_cap is None else refused_backoff_cap,
            self._refused_initial,
        )
        self._clock = clock
        self._log = log.bind(upstream=upstream)

        self._token: Token | None = None
        self._refresh_token: str | None = None
        self._refresh_deadline: float | None = None
        self._renew_at = 0.0
        self._last_attempt = -math.inf
        self._failures = 0
        self._refresh_failures = 0  # refreshes in a row that failed on the way
        self._refusals = 0  # full logins in a row whose credentials the IdP refused
        self._calling = "login"  # what the current IdP call is: "login" or "refresh"
        self._replacing_rejected = False  # the next token replaces one the upstream rejected
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
        if self._refusals and self._clock() < self._retry_at:
            # Nothing will change before the next attempt: say so now instead of holding the
            # request for token_wait.
            raise NoToken(
                f"the IdP refused the credentials ({self._last_error}); next attempt in "
                f"{max(0.0, self._retry_at - self._clock()):.0f} s",
                self._retry_after(),
            )
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
            self._replacing_rejected = True
            self._shared.rejected(token.value)
            self._wake.set()

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        self._flow.renew_tls(ssl_context)
        if self._refusals:
            # New certificate or key files: the refusal may be fixed, so try at once.
            self._log.info("credentials_retry", reason="TLS files changed")
            self._refusals = 0
            self._retry_at = 0.0
            self._wake.set()

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
            "credentials_refused": self._refusals > 0,
            "next_attempt_in": (
                round(max(0.0, self._retry_at - now), 1) if self._failures else None
            ),
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
            if self._refresh_failures >= REFRESH_FAILURES_BEFORE_LOGIN:
                self._log.info("refresh_skipped", reason="the last refreshes failed on the way",
                               failures=self._refresh_failures)
            else:
                self._calling = "refresh"
                try:
                    grant = await self._timed("refresh_token", self._flow.refresh(refresh))
                except AuthError as exc:
                    if not (isinstance(exc, InvalidGrant) or exc.kind is Failure.REFUSED):
                        self._refresh_failures += 1  # on the way: backoff, maybe a login next
                        raise
                    # Refused (invalid_grant, invalid_client, 403, a non-JSON 400): never
                    # retried (Keycloak would kill the session); a login can still work.
                    self._log.info("refresh_token_rejected", reason=exc.reason,
                                   status=exc.status)
                    self._refresh_token = None
                else:
                    self._refresh_failures = 0
                    return grant
        self._refresh_failures = 0
        self._calling = "login"
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
        token = Token(grant.access_token, sent_at + lifetime, margin=usable_margin(lifetime),
                      after_rejection=self._replacing_rejected)
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
        self._refusals = 0
        self._replacing_rejected = False
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
        refused = self._calling == "login" and exc.kind is Failure.REFUSED
        if refused:
            # Credentials, client or signature refused: retrying soon cannot help and may
            # lock the account. At least refused_backoff, with jitter only upwards.
            self._refusals += 1
            doublings = min(self._refusals - 1, 30)
            delay = min(self._refused_cap, self._refused_initial * 2**doublings)
            delay = min(self._refused_cap, delay * random.uniform(1.0, 1.1))
        else:
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
            credentials_refused=refused,
        )
        if refused:
            self._log.error(
                "credentials_refused",
                reason=exc.reason,
                consecutive_refusals=self._refusals,
                retry_in=round(delay, 1),
                hint="fix the credentials; a changed config or secret file retries at once",
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
