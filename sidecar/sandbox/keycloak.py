"""A Keycloak-like OpenID Connect token endpoint for the sandbox.

It reproduces the parts of Keycloak the sidecar depends on (docs/protocols.md,
"MOEX NTB" and "Keycloak token endpoint"): the password, refresh_token and
client_credentials grants, refresh-token rotation with optional reuse revocation, SSO
session idle/max limits and Keycloak's exact error bodies. Tokens are HS256-signed JWTs
with a per-instance random key, so clients can decode them like real ones, while only this
emulator can validate them.

It also speaks MOEX's two-factor extension (docs/protocols.md, "MOEX Passport"):
``grant_type=password`` with ``grant_type_moex=passport`` logs a MOEX Passport user in by a
detached CMS signature over their Passport token, checked by the real ``openssl cms``
against ``ca_file`` and the signing certificate registered for that user in ``passport``.

Fault injection (failures, hangs, latency) applies to the token calls; it and statistics
are available both as Python methods and over HTTP under ``/_sandbox/`` so a user can drive
them with curl.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote_plus

from aiohttp import web

from sidecar.sandbox import controls, jwts
from sidecar.sandbox.emulator import MAX_EVENTS
from sidecar.sandbox.oauth import NO_STORE, OAuthError, TokenEndpoint
from sidecar.sandbox.passport import PassportDenied, check_passport_login

if TYPE_CHECKING:
    from sidecar.sandbox.passport import MoexPassport

__all__ = ["KeycloakEmulator"]

_DEFAULT_CLIENTS: dict[str, str | None] = {
    "LK_NTB_PUBLIC": None,
    "direct_access": None,
    # MOEX issues a client_id and client_secret per application for Passport logins.
    "moex_registration": "registration-secret",
}
_DEFAULT_USERS: dict[str, str] = {"trader": "trader-password"}
_PRUNE_INTERVAL = 1.0  # seconds between sweeps of expired tokens and sessions
_SUPPORTED_GRANTS = ("password", "refresh_token", "client_credentials")


@dataclass
class _Session:
    sid: str
    client_id: str
    subject: str
    username: str
    scope: str
    started: float  # time.monotonic()
    last_refresh: float  # drives SSO Session Idle


@dataclass
class _AccessRecord:
    claims: dict[str, Any]
    sid: str
    expires_at: float  # time.monotonic(); sub-second precision, unlike the JWT exp claim


@dataclass
class _RefreshRecord:
    sid: str
    client_id: str
    expires_at: float
    used: bool = False


def _passport_denied(description: str) -> OAuthError:
    # MOEX documents only "HTTP 403" for a bad token or signature, with no body; the
    # sandbox adds a Keycloak-style body saying which check failed.
    return OAuthError(403, "access_denied", description)


def _merge_scope(requested: str | None) -> str:
    """Requested scopes plus Keycloak's default client scopes, without duplicates."""
    scopes: list[str] = []
    for item in [*(requested or "").split(), "profile", "email"]:
        if item not in scopes:
            scopes.append(item)
    return " ".join(scopes)


class KeycloakEmulator(TokenEndpoint):
    """An in-memory Keycloak realm with one token endpoint and sandbox controls.

    Settings are plain attributes and are read on every call, so tests and users can
    change them at runtime (``kc.access_ttl = 2``).
    """

    SETTINGS: ClassVar[dict[str, controls.Validator]] = {
        "access_ttl": controls.number,
        "refresh_ttl": controls.number,
        "session_max": controls.number,
        "revoke_refresh_token": controls.boolean,
        "latency": controls.number,
    }

    def __init__(
        self,
        *,
        realm: str = "SSO",
        clients: Mapping[str, str | None] | None = None,
        users: Mapping[str, str] | None = None,
        access_ttl: float = 300,
        refresh_ttl: float = 1800,
        session_max: float = 36000,
        revoke_refresh_token: bool = False,
        latency: float = 0.0,
        passport: MoexPassport | None = None,
        ca_file: Path | None = None,
    ) -> None:
        super().__init__()
        self.realm = realm
        self.clients: dict[str, str | None] = dict(_DEFAULT_CLIENTS if clients is None else clients)
        self.users: dict[str, str] = dict(_DEFAULT_USERS if users is None else users)
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl  # = SSO Session Idle
        self.session_max = session_max
        self.revoke_refresh_token = revoke_refresh_token
        self.latency = latency
        # For grant_type_moex=passport: the Passport that issued the tokens and the CA that
        # issued the users' signing certificates. Without both, that branch answers 403.
        self.passport = passport
        self.ca_file = ca_file

        self._key = secrets.token_bytes(32)
        self._kid = secrets.token_hex(8)
        # Every token handed out (bounded), so a test can check none of them leaked anywhere.
        self.issued: deque[str] = deque(maxlen=MAX_EVENTS)
        self._sessions: dict[str, _Session] = {}
        self._access: dict[str, _AccessRecord] = {}
        self._refresh: dict[str, _RefreshRecord] = {}
        self._next_prune = 0.0

        self._app.router.add_post(
            "/auth/realms/{realm}/protocol/openid-connect/token", self.token_handler
        )
        self._app.router.add_get(
            "/auth/realms/{realm}/.well-known/openid-configuration", self._discovery_handler
        )
        self.add_action_route("/_sandbox/revoke", "revoked_sessions", self.revoke_sessions)
        self.add_sandbox_routes()

    @property
    def token_path(self) -> str:
        return f"/auth/realms/{self.realm}/protocol/openid-connect/token"

    # -- controls --------------------------------------------------------------------------

    def revoke_sessions(self) -> int:
        """Kill every SSO session (like an admin logout or a restart); returns how many."""
        count = len(self._sessions)
        self._sessions.clear()
        return count

    def stats(self) -> dict[str, Any]:
        return {**self.token_stats(), "sessions": len(self._sessions)}

    # -- token inspection ------------------------------------------------------------------

    def introspect(self, token: str) -> dict[str, Any] | None:
        """Claims of a live access token issued here, or None if it is not usable."""
        claims = self._verify(token)
        if claims is None or claims.get("typ") != "Bearer":
            return None
        record = self._access.get(str(claims.get("jti")))
        now = time.monotonic()
        if record is None or now >= record.expires_at:
            return None
        if self._live_session(record.sid, now) is None:
            return None
        return dict(record.claims)

    def is_access_token_valid(self, token: str) -> bool:
        return self.introspect(token) is not None

    # -- JWT helpers -----------------------------------------------------------------------

    def _sign(self, claims: Mapping[str, Any]) -> str:
        return jwts.sign(self._key, claims, {"kid": self._kid})

    def _verify(self, token: str) -> dict[str, Any] | None:
        return jwts.verify(self._key, token)

    # -- sessions and issuing --------------------------------------------------------------

    def _live_session(self, sid: str, now: float) -> _Session | None:
        session = self._sessions.get(sid)
        if session is None:
            return None
        idle_over = now >= session.last_refresh + self.refresh_ttl
        max_over = now >= session.started + self.session_max
        if idle_over or max_over:
            del self._sessions[sid]
            return None
        return session

    def _prune(self, now: float) -> None:
        """Forget expired tokens so long runs do not grow memory without bound."""
        # Sweeping is O(tokens); doing it at most once a second keeps issuing O(1).
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_INTERVAL
        for jti in [j for j, r in self._access.items() if now >= r.expires_at]:
            del self._access[jti]
        for jti in [j for j, r in self._refresh.items() if now >= r.expires_at]:
            del self._refresh[jti]
        for sid in list(self._sessions):
            self._live_session(sid, now)

    def _new_session(self, client_id: str, username: str, scope: str, now: float) -> _Session:
        session = _Session(
            sid=str(uuid.uuid4()),
            client_id=client_id,
            subject=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.realm}/{username}")),
            username=username,
            scope=scope,
            started=now,
            last_refresh=now,
        )
        self._sessions[session.sid] = session
        return session

    def _issue(
        self, request: web.Request, session: _Session, *, with_refresh: bool
    ) -> dict[str, Any]:
        now = time.monotonic()
        wall = time.time()
        self._prune(now)
        issuer = f"{request.scheme}://{request.host}/auth/realms/{self.realm}"
        session_left = max(0.0, session.started + self.session_max - now)
        access_ttl = max(0.0, min(float(self.access_ttl), session_left))
        iat = int(wall)
        common = {
            "iat": iat,
            "iss": issuer,
            "sub": session.subject,
            "azp": session.client_id,
            "sid": session.sid,
            "session_state": session.sid,
            "scope": session.scope,
        }
        # exp is rounded down so a client trusting it never uses a dead token; the
        # precise deadline lives in _AccessRecord.
        access_claims = {
            **common,
            "exp": int(wall + access_ttl),
            "jti": str(uuid.uuid4()),
            "aud": "account",
            "typ": "Bearer",
            "preferred_username": session.username,
        }
        self._access[access_claims["jti"]] = _AccessRecord(
            claims=access_claims, sid=session.sid, expires_at=now + access_ttl
        )
        body: dict[str, Any] = {
            "access_token": self._sign(access_claims),
            "expires_in": math.ceil(access_ttl),
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": session.scope,
        }
        if with_refresh:
            refresh_ttl = max(0.0, min(float(self.refresh_ttl), session_left))
            refresh_claims = {
                **common,
                "exp": int(wall + refresh_ttl),
                "jti": str(uuid.uuid4()),
                "aud": issuer,
                "typ": "Refresh",
            }
            self._refresh[refresh_claims["jti"]] = _RefreshRecord(
                sid=session.sid, client_id=session.client_id, expires_at=now + refresh_ttl
            )
            body["refresh_token"] = self._sign(refresh_claims)
            body["refresh_expires_in"] = math.ceil(refresh_ttl)
            body["session_state"] = session.sid
        if "openid" in session.scope.split():
            id_claims = {
                **common,
                "exp": access_claims["exp"],
                "jti": str(uuid.uuid4()),
                "aud": session.client_id,
                "typ": "ID",
                "auth_time": iat,
                "at_hash": jwts.b64url(hashlib.sha256(body["access_token"].encode()).digest()[:16]),
                "preferred_username": session.username,
            }
            body["id_token"] = self._sign(id_claims)
        self.issued.extend(
            body[k] for k in ("access_token", "refresh_token", "id_token") if k in body
        )
        return body

    # -- grants ----------------------------------------------------------------------------

    def _authenticate_client(self, request: web.Request, form: Mapping[str, str]) -> str:
        """Return the client id, authenticated by HTTP Basic or by form fields."""
        bad_client = OAuthError(
            401, "invalid_client", "Invalid client or Invalid client credentials"
        )
        header = request.headers.get("Authorization", "")
        secrets_sent: list[str]
        if header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except ValueError:
                raise bad_client from None
            raw_id, sep, raw_secret = decoded.partition(":")
            # RFC 6749 2.3.1 wants both parts form-urlencoded before base64, but many
            # clients skip that step; accept either spelling, as lenient servers do.
            client_id = unquote_plus(raw_id)
            if client_id not in self.clients:
                client_id = raw_id
            secrets_sent = [unquote_plus(raw_secret), raw_secret] if sep else []
        else:
            client_id = form.get("client_id", "")
            secret = form.get("client_secret")
            secrets_sent = [secret] if secret is not None else []
        if not client_id:
            # Keycloak answers a missing client_id with 400 invalid_client, not 401.
            raise OAuthError(400, "invalid_client", "Missing client_id parameter")
        if client_id not in self.clients:
            raise bad_client
        expected = self.clients[client_id]
        if expected is not None and not any(
            hmac.compare_digest(sent.encode(), expected.encode()) for sent in secrets_sent
        ):
            raise bad_client
        return client_id

    def _password_grant(
        self, request: web.Request, form: Mapping[str, str], client_id: str
    ) -> dict[str, Any]:
        username = form.get("username")
        password = form.get("password")
        if not username:
            raise OAuthError(400, "invalid_request", "Missing parameter: username")
        if password is None:
            raise OAuthError(400, "invalid_request", "Missing parameter: password")
        expected = self.users.get(username)
        if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
            raise OAuthError(401, "invalid_grant", "Invalid user credentials")
        now = time.monotonic()
        session = self._new_session(client_id, username, _merge_scope(form.get("scope")), now)
        return self._issue(request, session, with_refresh=True)

    def _refresh_grant(
        self, request: web.Request, form: Mapping[str, str], client_id: str
    ) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError(400, "invalid_request", "Missing form parameter: refresh_token")
        claims = self._verify(token)
        if claims is None or claims.get("typ") != "Refresh":
            raise OAuthError(400, "invalid_grant", "Invalid refresh token")
        now = time.monotonic()
        record = self._refresh.get(str(claims.get("jti")))
        # Records are pruned only once expired, so "unknown" means "expired" here.
        if record is None or now >= record.expires_at:
            raise OAuthError(400, "invalid_grant", "Token is not active")
        if record.client_id != client_id:
            raise OAuthError(400, "invalid_grant", "Unmatching clients")
        session = self._live_session(record.sid, now)
        if session is None:
            raise OAuthError(400, "invalid_grant", "Session not active")
        if self.revoke_refresh_token and record.used:
            # Keycloak treats reuse as token theft and ends the whole session.
            self._sessions.pop(session.sid, None)
            raise OAuthError(400, "invalid_grant", "Maximum allowed refresh token reuse exceeded")
        record.used = True
        session.last_refresh = now
        return self._issue(request, session, with_refresh=True)

    async def _passport_grant(
        self, request: web.Request, form: Mapping[str, str]
    ) -> dict[str, Any]:
        """MOEX two-factor login. Every failure is a 403, the only answer MOEX documents
        for it: a bad ``client_id`` or ``client_secret`` as much as a bad signature (not
        Keycloak's usual 401 ``invalid_client``)."""
        try:
            client_id = self._authenticate_client(request, form)
        except OAuthError as exc:
            raise _passport_denied(exc.description) from None
        if self.clients.get(client_id) is None:
            raise _passport_denied("Passport login requires a confidential client")
        try:
            user = await check_passport_login(self.passport, self.ca_file, form)
        except PassportDenied as exc:
            raise _passport_denied(exc.reason) from None
        now = time.monotonic()
        session = self._new_session(client_id, user, _merge_scope(form["scope"]), now)
        return self._issue(request, session, with_refresh=True)

    def _client_credentials_grant(
        self, request: web.Request, form: Mapping[str, str], client_id: str
    ) -> dict[str, Any]:
        if self.clients.get(client_id) is None:
            raise OAuthError(
                400, "unauthorized_client", "Public client not allowed to retrieve service account"
            )
        now = time.monotonic()
        username = f"service-account-{client_id.lower()}"
        session = self._new_session(client_id, username, _merge_scope(form.get("scope")), now)
        # Keycloak issues no refresh token for client_credentials by default.
        return self._issue(request, session, with_refresh=False)

    def grant_name(self, form: Mapping[str, Any]) -> str | None:
        grant = super().grant_name(form)
        if grant == "password" and form.get("grant_type_moex") == "passport":
            return "passport"  # counted apart from plain password logins
        return grant

    async def grant(self, request: web.Request, form: Mapping[str, str]) -> web.Response:
        try:
            if request.match_info["realm"] != self.realm:
                return web.json_response({"error": "Realm does not exist"}, status=404)
            grant = form.get("grant_type")
            if not grant:
                raise OAuthError(400, "invalid_request", "Missing form parameter: grant_type")
            if grant not in _SUPPORTED_GRANTS:
                raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type")
            if grant == "password" and form.get("grant_type_moex") == "passport":
                body = await self._passport_grant(request, form)
                return web.json_response(body, headers=NO_STORE)
            client_id = self._authenticate_client(request, form)
            if grant == "password":
                body = self._password_grant(request, form, client_id)
            elif grant == "refresh_token":
                body = self._refresh_grant(request, form, client_id)
            else:
                body = self._client_credentials_grant(request, form, client_id)
        except OAuthError as exc:
            return exc.response()
        return web.json_response(body, headers=NO_STORE)

    # -- HTTP handlers ---------------------------------------------------------------------

    async def _discovery_handler(self, request: web.Request) -> web.Response:
        if request.match_info["realm"] != self.realm:
            return web.json_response({"error": "Realm does not exist"}, status=404)
        issuer = f"{request.scheme}://{request.host}/auth/realms/{self.realm}"
        return web.json_response(
            {
                "issuer": issuer,
                "token_endpoint": f"{issuer}/protocol/openid-connect/token",
                "grant_types_supported": list(_SUPPORTED_GRANTS),
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
            }
        )

