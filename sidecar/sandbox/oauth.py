"""What the two OAuth token servers of the sandbox (Keycloak and WSO2) share: OAuth error
bodies, and a token endpoint under the fault controls that counts its calls by grant."""

from __future__ import annotations

import abc
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sidecar.sandbox.controls import failure_text
from sidecar.sandbox.emulator import Emulator

__all__ = ["NO_STORE", "OAuthError", "TokenEndpoint"]

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Error codes used when a 4xx failure is injected, so the body still looks like OAuth.
_INJECTED_4XX_ERRORS = {
    400: "invalid_request",
    401: "invalid_client",
    403: "access_denied",
    429: "temporarily_unavailable",
}


class OAuthError(Exception):
    """An error answered as Keycloak does: ``{"error", "error_description"}``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> web.Response:
        return web.json_response(
            {"error": self.error, "error_description": self.description},
            status=self.status,
            headers=NO_STORE,
        )


class TokenEndpoint(Emulator):
    """An emulator whose controlled calls are the token requests, counted by grant type.

    Subclasses route their token path to ``token_handler`` and answer the form in
    ``grant``; injected failures and shutdown answers are OAuth errors, so clients parse
    them like real ones.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._calls = 0
        self._by_grant: Counter[str] = Counter()

    def answer_failure(self, status: int) -> web.Response:
        error = (
            "server_error" if status >= 500 else _INJECTED_4XX_ERRORS.get(status, "invalid_request")
        )
        return OAuthError(status, error, failure_text(status)).response()

    def answer_closed(self) -> web.Response:
        return OAuthError(503, "server_error", "Server is shutting down").response()

    def grant_name(self, form: Mapping[str, Any]) -> str | None:
        """What the call is counted as in ``by_grant`` (None: "(missing)")."""
        raw = form.get("grant_type")
        return raw if isinstance(raw, str) else None

    @abc.abstractmethod
    async def grant(self, request: web.Request, form: Mapping[str, str]) -> web.Response:
        """Answer one token call of the dialect (its grant types, its error shapes)."""

    async def token_handler(self, request: web.Request) -> web.Response:
        event: dict[str, Any] = {"grant": None, "start": time.monotonic()}
        try:
            with self._controls.track(event) as call:
                form = await request.post()
                event["grant"] = self.grant_name(form)
                response = await self.intercept() or await self.grant(
                    request, {k: v for k, v in form.items() if isinstance(v, str)}
                )
                return call.done(response)
        finally:
            self._calls += 1
            self._by_grant[event["grant"] or "(missing)"] += 1

    def token_stats(self) -> dict[str, Any]:
        return {"calls": self._calls, "by_grant": dict(self._by_grant), **self.call_stats()}

    def reset_stats(self) -> None:
        self._calls = 0
        self._by_grant.clear()
        super().reset_stats()
