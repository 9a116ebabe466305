"""A scripted auth flow for token manager tests: answers per call from a script and records
every call with its overlap."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.auth.base import AuthError, Grant, InvalidGrant
from sidecar.auth.manager import TokenManager


class ScriptedFlow:
    """An IdP stand-in: answers per call from a script; records every call with timing."""

    grant_type = "password"

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.login_answer: Callable[[int], Grant] = lambda n: Grant(
            f"access-{n}", 300, f"r-{n}", 1800
        )
        self.refresh_answer: Callable[[int], Grant] | None = None
        self.fail_with: AuthError | None = None

    async def _call(self, kind: str, answer: Callable[[int], Grant] | None) -> Grant:
        self.calls.append(kind)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
            if self.fail_with is not None:
                raise self.fail_with
            if answer is None:
                raise InvalidGrant("IdP answered 400 invalid_grant: Token is not active")
            return answer(len(self.calls))
        finally:
            self.in_flight -= 1

    async def login(self) -> Grant:
        return await self._call("login", self.login_answer)

    async def refresh(self, refresh_token: str) -> Grant:
        return await self._call("refresh", self.refresh_answer)

    def renew_tls(self, ssl_context: object) -> None:
        return None

    async def close(self) -> None:
        return None


def manager(made: list[TokenManager], flow: ScriptedFlow, **kw: float) -> TokenManager:
    m = TokenManager("test", flow, **kw)  # type: ignore[arg-type]
    made.append(m)
    return m
