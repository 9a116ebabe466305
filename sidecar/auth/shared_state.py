"""The token manager's seam to a shared store: adopt the token another replica obtained,
wait while one renews it, or lead (with the shared refresh token) and publish the result.
With the memory store every turn is "lead" and nothing is published.

A part of :class:`sidecar.auth.manager.TokenManager` (its own module to keep that one
readable), as the attributes below say."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sidecar import logs
from sidecar.auth.base import AuthError, Failure, Token
from sidecar.auth.timing import MIN_RENEWAL_GAP, usable_margin
from sidecar.store.base import Coordinator, SharedToken


class SharedState:
    _shared: Coordinator
    _token: Token | None
    _refresh_token: str | None
    _refresh_deadline: float | None
    _renew_at: float
    _clock: Callable[[], float]
    _log: Any
    _wake: asyncio.Event

    def _settle(self, token: Token) -> None: ...

    def _fail(self, exc: AuthError) -> None: ...

    async def _attempt_alone(self) -> None: ...

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
