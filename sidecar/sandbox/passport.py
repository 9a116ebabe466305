"""A MOEX Passport-like ``/authenticate`` endpoint for the sandbox (PROTOCOLS section 2).

``GET /authenticate`` with HTTP Basic answers the Passport token in cookie
``MicexPassportCert``. The token is deliberately awkward (base64 with ``+``, ``/`` and
``=``), so a client that does not URL-encode it in the token form, or signs anything but
its exact bytes, fails as it would against MOEX. With ``redirect`` on, success is a 302
with the cookie, as MOEX sometimes answers; clients must read the cookie, not follow it.

The emulator also keeps what the Keycloak ``grant_type_moex=passport`` branch needs: the
live tokens (``token_valid``) and the signing certificate MOEX's CA issued each user
(``signers``). Fault injection and statistics work as in the Keycloak emulator, as Python
methods and under ``/_sandbox/``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiohttp import web
from cryptography import x509

from sidecar.sandbox import controls

__all__ = ["COOKIE_NAME", "MoexPassport"]

COOKIE_NAME = "MicexPassportCert"
_DEFAULT_USERS: dict[str, str] = {"trader@example.com": "passport-password"}
_MAX_EVENTS = 10_000  # keep the issued-token log bounded during long runs
_PRUNE_INTERVAL = 1.0  # seconds between sweeps of expired tokens
_TOKEN_BYTES = 95  # 95 % 3 == 2: the base64 text always ends with one "="
_REALM_HEADER = {"WWW-Authenticate": 'Basic realm="MOEX Passport"'}
_MARKER = "X-MicexPassport-Marker"
_SETTINGS: dict[str, controls.Validator] = {
    "token_ttl": controls.number,
    "redirect": controls.boolean,
}


@dataclass
class _Token:
    user: str
    expires_at: float  # time.monotonic()


def _awkward_token() -> str:
    """Base64 of random bytes, redrawn until it has both ``+`` and ``/``."""
    while True:
        token = base64.b64encode(secrets.token_bytes(_TOKEN_BYTES)).decode("ascii")
        if "+" in token and "/" in token:
            return token


def _injected_failure(status: int) -> web.Response:
    # Plain text, like the rest of Passport's answers.
    return web.Response(status=status, text=controls.failure_text(status) + "\n")


def _shutting_down() -> web.Response:
    return web.Response(status=503, text="Server is shutting down\n")


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class MoexPassport:
    """The Passport application; settings are attributes read on every call."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        token_ttl: float = 3600,
        redirect: bool = False,
    ) -> None:
        self.users: dict[str, str] = dict(_DEFAULT_USERS if users is None else users)
        self.token_ttl = token_ttl
        self.redirect = redirect
        # The signing certificate MOEX's CA issued each Passport user (by user name).
        self.signers: dict[str, x509.Certificate] = {}
        # Every Passport token handed out (bounded), so tests can look for leaks.
        self.issued: deque[str] = deque(maxlen=_MAX_EVENTS)
        self._tokens: dict[str, _Token] = {}
        self._next_prune = 0.0

        self._controls = controls.FaultControls()
        self._calls = 0
        self._granted = 0
        self._denied = 0

        self._app = web.Application()
        self._app.router.add_get("/authenticate", self._authenticate_handler)
        self._app.router.add_post("/_sandbox/expire", self._expire_handler)
        controls.add_sandbox_routes(self._app, self, self._controls, _SETTINGS)

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def controls(self) -> controls.FaultControls:
        """Fault injection for the ``/authenticate`` calls from Python (``fail_with``,
        ``fail_randomly``, ``hang``, ``injected``); ``/_sandbox/fail`` over HTTP."""
        return self._controls

    # -- registry --------------------------------------------------------------------------

    def register_signer(self, user: str, cert: x509.Certificate) -> None:
        """Record ``cert`` as the signing certificate MOEX issued to ``user``."""
        self.signers[user] = cert

    def token_valid(self, token: str) -> str | None:
        """The user a Passport token was issued to, while it has not expired."""
        found = self._tokens.get(token)
        if found is None or time.monotonic() >= found.expires_at:
            return None
        return found.user

    def issue_token(self, user: str) -> str:
        """A new Passport token for ``user`` (what a successful /authenticate hands out)."""
        now = time.monotonic()
        self._prune(now)
        token = _awkward_token()
        self._tokens[token] = _Token(user=user, expires_at=now + float(self.token_ttl))
        self.issued.append(token)
        return token

    def expire_tokens(self) -> int:
        """Expire every live Passport token now; returns how many were live."""
        now = time.monotonic()
        live = sum(1 for t in self._tokens.values() if now < t.expires_at)
        self._tokens.clear()
        return live

    def _prune(self, now: float) -> None:
        # At most once a second, so issuing stays O(1) under load.
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_INTERVAL
        for token in [k for k, t in self._tokens.items() if now >= t.expires_at]:
            del self._tokens[token]

    # -- controls --------------------------------------------------------------------------

    def fail_with(self, status: int | None, count: int | None = None) -> None:
        """Answer the next ``count`` /authenticate calls (all if None) with ``status``.

        ``status=None`` (or ``count=0``) clears the failure.
        """
        self._controls.fail_with(status, count)

    def hang(self, enabled: bool) -> None:
        """While enabled, /authenticate waits and never answers (until disabled or shutdown)."""
        self._controls.hang(enabled)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "calls": self._calls,
            "granted": self._granted,
            "denied": self._denied,
            "live_tokens": sum(1 for t in self._tokens.values() if now < t.expires_at),
            "signers": sorted(self.signers),
        }

    def reset_stats(self) -> None:
        self._calls = 0
        self._granted = 0
        self._denied = 0

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SETTINGS}

    # -- /authenticate ---------------------------------------------------------------------

    def _cookie_header(self, token: str) -> str:
        # Written by hand: http.cookies would wrap a value with "/" and "=" in quotes, and
        # MOEX sends it bare (RFC 6265 cookie-octets allow both). No Domain, as MOEX.
        ttl = max(0.0, float(self.token_ttl))
        # Rounded down, so a client keeping the cookie until expiry never holds a dead one.
        max_age = math.floor(ttl)
        expires = formatdate(math.floor(time.time() + ttl), usegmt=True)
        return (
            f"{COOKIE_NAME}={token}; Expires={expires}; Max-Age={max_age}; Path=/; HttpOnly; Secure"
        )

    def _authenticate(self, request: web.Request) -> web.Response:
        credentials = _basic_credentials(request.headers.get("Authorization"))
        expected = self.users.get(credentials[0]) if credentials is not None else None
        if (
            credentials is None
            or expected is None
            or not hmac.compare_digest(credentials[1].encode(), expected.encode())
        ):
            self._denied += 1
            return web.Response(
                status=401,
                text="Authentication required\n",
                headers={**_REALM_HEADER, _MARKER: "denied"},
            )
        self._granted += 1
        token = self.issue_token(credentials[0])
        headers = {_MARKER: "granted", "Cache-Control": "no-store"}
        if self.redirect:
            response = web.Response(status=302, headers={**headers, "Location": "/"})
        else:
            response = web.Response(text="granted\n", headers=headers)
        response.headers.add("Set-Cookie", self._cookie_header(token))
        return response

    async def _authenticate_handler(self, request: web.Request) -> web.Response:
        self._calls += 1
        intercepted = await self._controls.intercept(
            0.0, closed=_shutting_down, failure=_injected_failure
        )
        return intercepted or self._authenticate(request)

    # -- /_sandbox -------------------------------------------------------------------------

    async def _expire_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"expired": self.expire_tokens()})
