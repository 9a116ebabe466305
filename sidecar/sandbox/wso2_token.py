"""The token side of the KISC WSO2 emulator: WSO2 API Manager 2.x's key manager
(docs/protocols.md, "KISC").

* ``POST /token``: the password and refresh_token grants with opaque UUID tokens and
  WSO2's token semantics. A repeated password grant hands back the *same* still-valid
  token pair with less ``expires_in`` left; refresh tokens are single-use and rotate
  (RenewRefreshTokenForRefreshGrant=true); the password grant also checks that the user
  name is the TLS client certificate's CN without its system prefix, as KISC requires.
* ``POST /revoke``: RFC 7009 revocation as WSO2 implements it.

The controlled calls of the fault injection are the ``/token`` calls.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web
from cryptography.x509.oid import NameOID

from sidecar.sandbox import controls
from sidecar.sandbox.emulator import MAX_EVENTS
from sidecar.sandbox.inbound import peer_certificate
from sidecar.sandbox.oauth import NO_STORE, OAuthError, TokenEndpoint

__all__ = ["Wso2KeyManager"]

_DEFAULT_USERS: dict[str, str] = {"bank-user": "bank-password"}
_PRUNE_INTERVAL = 1.0  # seconds between sweeps of dead token rows
_SUPPORTED_GRANTS = ("password", "refresh_token")


_ACTIVE = "ACTIVE"
_REFRESHED = "REFRESHED"  # its refresh token was used: the row is dead
_REVOKED = "REVOKED"  # superseded by a new password grant, or revoked via /revoke


@dataclass
class _TokenRow:
    """One row of WSO2's access-token table: an access token and its refresh token."""

    access_token: str
    refresh_token: str
    consumer_key: str
    username: str
    scope: str
    access_expires_at: float  # time.monotonic(); sub-second precision
    refresh_expires_at: float
    state: str = _ACTIVE

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.consumer_key, self.username, _scope_key(self.scope))


def _normalize_scope(scope: str | None) -> str:
    """Requested scopes without duplicates; WSO2 grants ``default`` when none is asked."""
    scopes = list(dict.fromkeys((scope or "").split()))
    return " ".join(scopes) if scopes else "default"


def _scope_key(scope: str) -> str:
    # WSO2 matches an existing token by a hash of the sorted scope set.
    return " ".join(sorted(set(scope.split())))


# What may end the system prefix of a KISC certificate's CN. KISC says the portal user
# name is the CN "without the system prefix" and does not publish its spelling, so any
# leading run of letters, digits and "_" ending in one of these is taken for one.
_PREFIX_ENDS = ".:_"


def cn_matches_user(common_name: str | None, username: str) -> bool:
    """Whether ``username`` is the CN, or the CN without a leading system prefix."""
    if not common_name or not username:
        return False
    if common_name == username:
        return True
    prefix = common_name[: -len(username)] if common_name.endswith(username) else ""
    return (
        len(prefix) > 1
        and prefix[-1] in _PREFIX_ENDS
        and all(c.isalnum() or c == "_" for c in prefix[:-1])
    )


def _peer_common_name(request: web.Request) -> str | None:
    cert = peer_certificate(request)
    if cert is None:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


class Wso2KeyManager(TokenEndpoint):
    """WSO2's token and revocation endpoints; ``Wso2Gateway`` adds the API in front.

    Token rules follow WSO2 Identity Server's grant handlers. There is one live token
    row per consumer key, user and scope. A password grant returns that row's pair
    while both tokens have more than 1 s left (after ``timestamp_skew``), with the
    smaller ``expires_in``; otherwise it issues a new access token and keeps the old
    refresh token if that outlives the new access token. A refresh grant uses up the
    refresh token and issues a new pair. ``latency`` delays ``/token`` answers only.
    """

    token_path = "/token"
    revoke_path = "/revoke"
    SETTINGS: ClassVar[dict[str, controls.Validator]] = {
        "access_ttl": controls.number,
        "refresh_ttl": controls.number,
        "timestamp_skew": controls.number,
        "latency": controls.number,
    }

    def __init__(
        self,
        *,
        consumer_key: str = "kisc-consumer-key",
        consumer_secret: str = "kisc-consumer-secret",
        users: Mapping[str, str] | None = None,
        access_ttl: float = 3600,
        refresh_ttl: float = 86400,
        timestamp_skew: float = 0.0,
        latency: float = 0.0,
    ) -> None:
        super().__init__()
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.users: dict[str, str] = dict(_DEFAULT_USERS if users is None else users)
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        # WSO2 subtracts its TimestampSkew (identity.xml) from the time left when deciding
        # whether to hand back an existing token; 0 here unless a test wants it.
        self.timestamp_skew = timestamp_skew
        self.latency = latency

        # Every token handed out (bounded), so a test can check none of them leaked anywhere.
        self.issued: deque[str] = deque(maxlen=MAX_EVENTS)
        self._by_access: dict[str, _TokenRow] = {}
        self._by_refresh: dict[str, _TokenRow] = {}
        self._current: dict[tuple[str, str, str], _TokenRow] = {}
        self._next_prune = 0.0
        self._refresh_reuse = 0
        self._revocations = 0

        router = self._app.router
        router.add_post(self.token_path, self.token_handler)
        router.add_post(self.revoke_path, self._revoke_handler)
        self.add_action_route("/_sandbox/expire", "expired", self.expire_tokens)

    # -- controls --------------------------------------------------------------------------

    def expire_tokens(self) -> int:
        """Expire every access token now (refresh tokens stay usable); returns how many."""
        now = time.monotonic()
        count = 0
        for row in self._by_access.values():
            if row.state == _ACTIVE and now < row.access_expires_at:
                count += 1
            row.access_expires_at = min(row.access_expires_at, now)
        return count

    def fail_token_with(self, status: int | None, count: int | None = None) -> None:
        """Answer the next ``count`` /token calls (all if None) with HTTP ``status``;
        the same as ``fail_with``. ``status=None`` (or ``count=0``) clears the failure.
        """
        self.fail_with(status, count)

    def token_stats(self) -> dict[str, Any]:
        return {
            **super().token_stats(),
            "refresh_reuse": self._refresh_reuse,
            "revocations": self._revocations,
        }

    def stats(self) -> dict[str, Any]:
        return self.token_stats()

    def reset_stats(self) -> None:
        super().reset_stats()
        self._refresh_reuse = 0
        self._revocations = 0

    def is_access_token_valid(self, token: str) -> bool:
        return self._live_row(token, time.monotonic()) is not None

    # -- token rows ------------------------------------------------------------------------

    def _live_row(self, access_token: str, now: float) -> _TokenRow | None:
        row = self._by_access.get(access_token)
        if row is None or row.state != _ACTIVE or now >= row.access_expires_at:
            return None
        return row

    def _prune(self, now: float) -> None:
        """Forget rows whose tokens are all past expiry, so long runs stay bounded."""
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_INTERVAL
        dead = [
            row
            for row in self._by_access.values()
            if now >= row.access_expires_at and now >= row.refresh_expires_at
        ]
        for row in dead:
            # A refresh token carried over to a newer row must stay reachable.
            if self._by_access.get(row.access_token) is row:
                del self._by_access[row.access_token]
            if self._by_refresh.get(row.refresh_token) is row:
                del self._by_refresh[row.refresh_token]
            if self._current.get(row.identity) is row:
                del self._current[row.identity]

    def _time_left(self, expires_at: float, now: float) -> float:
        """WSO2's remaining validity: minus the timestamp skew, and 0 unless over 1 s."""
        left = expires_at - now - self.timestamp_skew
        return left if left > 1.0 else 0.0

    def _new_row(
        self,
        consumer_key: str,
        username: str,
        scope: str,
        now: float,
        *,
        keep_refresh_of: _TokenRow | None = None,
    ) -> _TokenRow:
        previous = self._current.get((consumer_key, username, _scope_key(scope)))
        if previous is not None and previous.state == _ACTIVE:
            previous.state = _REVOKED  # one ACTIVE row per consumer, user and scope
        row = _TokenRow(
            access_token=str(uuid.uuid4()),
            refresh_token=str(uuid.uuid4()),
            consumer_key=consumer_key,
            username=username,
            scope=scope,
            access_expires_at=now + max(0.0, float(self.access_ttl)),
            refresh_expires_at=now + max(0.0, float(self.refresh_ttl)),
        )
        if keep_refresh_of is not None:
            # The new access token inherits the old, still-valid refresh token as is.
            row.refresh_token = keep_refresh_of.refresh_token
            row.refresh_expires_at = keep_refresh_of.refresh_expires_at
        self._by_access[row.access_token] = row
        self._by_refresh[row.refresh_token] = row
        self._current[row.identity] = row
        return row

    def _token_body(self, row: _TokenRow, seconds_left: float) -> dict[str, Any]:
        # Whole seconds, rounded down as WSO2 does (milliseconds / 1000).
        expires_in = max(0, math.floor(seconds_left))
        self.issued.extend((row.access_token, row.refresh_token))
        return {
            "access_token": row.access_token,
            "refresh_token": row.refresh_token,
            "scope": row.scope,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }

    # -- grants ----------------------------------------------------------------------------

    def _authenticate_client(self, request: web.Request, form: Mapping[str, str]) -> str:
        """The consumer key, from HTTP Basic (or client_id/client_secret form fields)."""
        bad_client = OAuthError(401, "invalid_client", "Client Authentication failed.")
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() != "basic":
                raise bad_client
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise bad_client from None
            key, sep, secret = decoded.partition(":")
            if not sep:
                raise bad_client
        else:
            key = form.get("client_id", "")
            secret = form.get("client_secret", "")
        key_ok = hmac.compare_digest(key.encode(), self.consumer_key.encode())
        secret_ok = hmac.compare_digest(secret.encode(), self.consumer_secret.encode())
        if not (key and key_ok and secret_ok):
            raise bad_client
        return key

    def _password_grant(
        self, request: web.Request, form: Mapping[str, str], consumer_key: str
    ) -> dict[str, Any]:
        username = form["username"]
        password = form["password"]
        # KISC: the user name is the client certificate's CN, without the system prefix.
        if not cn_matches_user(_peer_common_name(request), username):
            raise OAuthError(400, "invalid_grant", "Certificate CN does not match the user")
        expected = self.users.get(username)
        if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
            raise OAuthError(400, "invalid_grant", f"Authentication failed for {username}")
        scope = _normalize_scope(form.get("scope"))
        now = time.monotonic()
        self._prune(now)
        existing = self._current.get((consumer_key, username, _scope_key(scope)))
        keep_refresh = False
        if existing is not None and existing.state == _ACTIVE:
            access_left = self._time_left(existing.access_expires_at, now)
            refresh_left = self._time_left(existing.refresh_expires_at, now)
            if access_left > 0 and refresh_left > 0:
                # WSO2 hands back the still-valid pair, with less time left.
                return self._token_body(existing, access_left)
            # A new access token; the refresh token survives if it outlives the new one.
            keep_refresh = refresh_left > float(self.access_ttl)
        row = self._new_row(
            consumer_key, username, scope, now, keep_refresh_of=existing if keep_refresh else None
        )
        return self._token_body(row, float(self.access_ttl))

    def _refresh_grant(self, form: Mapping[str, str], consumer_key: str) -> dict[str, Any]:
        not_found = OAuthError(400, "invalid_grant", "Persisted access token data not found")
        now = time.monotonic()
        self._prune(now)
        row = self._by_refresh.get(form["refresh_token"])
        if row is None or row.consumer_key != consumer_key:
            raise not_found
        if row.state == _REFRESHED:
            self._refresh_reuse += 1
            raise not_found
        if row.state != _ACTIVE or now >= row.refresh_expires_at:
            raise not_found
        # RenewRefreshTokenForRefreshGrant=true: the old pair dies, a new one is issued.
        row.state = _REFRESHED
        new = self._new_row(consumer_key, row.username, row.scope, now)
        return self._token_body(new, float(self.access_ttl))

    async def grant(self, request: web.Request, form: Mapping[str, str]) -> web.Response:
        try:
            # Like WSO2 (Oltu), the request is validated before the client is authenticated.
            grant = form.get("grant_type")
            if not grant:
                raise OAuthError(400, "invalid_request", "Missing grant_type parameter value")
            if grant not in _SUPPORTED_GRANTS:
                raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type value")
            required = ("username", "password") if grant == "password" else ("refresh_token",)
            missing = [name for name in required if not form.get(name)]
            if missing:
                raise OAuthError(400, "invalid_request", f"Missing parameters: {' '.join(missing)}")
            consumer_key = self._authenticate_client(request, form)
            if grant == "password":
                body = self._password_grant(request, form, consumer_key)
            else:
                body = self._refresh_grant(form, consumer_key)
        except OAuthError as exc:
            return exc.response()
        return web.json_response(body, headers=NO_STORE)

    # -- faults ----------------------------------------------------------------------------

    # -- HTTP handlers ---------------------------------------------------------------------

    async def _revoke_handler(self, request: web.Request) -> web.Response:
        """RFC 7009 as WSO2 does it: 200 whether or not the token was known."""
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        try:
            consumer_key = self._authenticate_client(request, form)
        except OAuthError as exc:
            return exc.response()
        token = form.get("token", "")
        if not token:
            return OAuthError(400, "invalid_request", "Invalid revocation request").response()
        row = self._by_access.get(token) or self._by_refresh.get(token)
        if row is not None and row.consumer_key == consumer_key and row.state == _ACTIVE:
            row.state = _REVOKED
            self._revocations += 1
        return web.Response(status=200, headers=NO_STORE)
