"""A Keycloak-like OpenID Connect token endpoint for the sandbox.

It reproduces the parts of Keycloak the sidecar depends on (docs: PROTOCOLS sections 1
and 3): the password, refresh_token and client_credentials grants, refresh-token
rotation with optional reuse revocation, SSO session idle/max limits and Keycloak's
exact error bodies. Tokens are HS256-signed JWTs with a per-instance random key, so
clients can decode them like real ones, while only this emulator can validate them.

It also speaks MOEX's two-factor extension (PROTOCOLS section 2): ``grant_type=password``
with ``grant_type_moex=passport`` logs a MOEX Passport user in by a detached CMS signature
over their Passport token, checked by the real ``openssl cms`` against ``ca_file`` and the
signing certificate registered for that user in ``passport``.

Fault injection (failures, hangs, latency) and statistics are available both as Python
methods and over HTTP under ``/_sandbox/`` so a user can drive them with curl.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.sandbox import controls, jwts
from sidecar.sandbox.cms import CmsInvalid, verify_cms

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
_MAX_EVENTS = 10_000  # keep the issued-token log bounded during long load runs
_PRUNE_INTERVAL = 1.0  # seconds between sweeps of expired tokens and sessions
_SUPPORTED_GRANTS = ("password", "refresh_token", "client_credentials")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Error codes used when a 4xx failure is injected, so the body still looks like OAuth.
_INJECTED_4XX_ERRORS = {
    400: "invalid_request",
    401: "invalid_client",
    403: "access_denied",
    429: "temporarily_unavailable",
}
_SETTINGS: dict[str, controls.Validator] = {
    "access_ttl": controls.number,
    "refresh_ttl": controls.number,
    "session_max": controls.number,
    "revoke_refresh_token": controls.boolean,
    "latency": controls.number,
}
_PASSPORT_FIELDS = ("certificate", "algorithm", "signature", "scope")
_GOST_UNSUPPORTED = "GOST signatures are not supported by the sandbox; use RSA"


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
            headers=_NO_STORE,
        )


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


def _injected_failure(status: int) -> web.Response:
    """An injected failure worded as an OAuth error, so clients parse it like a real one."""
    error = "server_error" if status >= 500 else _INJECTED_4XX_ERRORS.get(status, "invalid_request")
    return OAuthError(status, error, controls.failure_text(status)).response()


def _shutting_down() -> web.Response:
    return OAuthError(503, "server_error", "Server is shutting down").response()


def _passport_denied(description: str) -> OAuthError:
    # MOEX documents only "HTTP 403" for a bad token or signature, with no body; the
    # sandbox adds a Keycloak-style body saying which check failed.
    return OAuthError(403, "access_denied", description)


def _plus_hint(value: str) -> str:
    """A hint when a form value has spaces: a "+" sent without URL-encoding."""
    return " (it has spaces: was a '+' sent without URL-encoding?)" if " " in value else ""


def _merge_scope(requested: str | None) -> str:
    """Requested scopes plus Keycloak's default client scopes, without duplicates."""
    scopes: list[str] = []
    for item in [*(requested or "").split(), "profile", "email"]:
        if item not in scopes:
            scopes.append(item)
    return " ".join(scopes)


class KeycloakEmulator:
    """An in-memory Keycloak realm with one token endpoint and sandbox controls.

    Settings are plain attributes and are read on every call, so tests and users can
    change them at runtime (``kc.access_ttl = 2``).
    """

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
        self.issued: deque[str] = deque(maxlen=_MAX_EVENTS)
        self._sessions: dict[str, _Session] = {}
        self._access: dict[str, _AccessRecord] = {}
        self._refresh: dict[str, _RefreshRecord] = {}
        self._next_prune = 0.0

        self._controls = controls.FaultControls()
        self._calls = 0
        self._by_grant: Counter[str] = Counter()

        self._app = web.Application()
        self._app.router.add_post(
            "/auth/realms/{realm}/protocol/openid-connect/token", self._token_handler
        )
        self._app.router.add_get(
            "/auth/realms/{realm}/.well-known/openid-configuration", self._discovery_handler
        )
        self._app.router.add_post("/_sandbox/revoke", self._revoke_handler)
        controls.add_sandbox_routes(self._app, self, self._controls, _SETTINGS)

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def controls(self) -> controls.FaultControls:
        """Fault injection for the token calls from Python (``fail_with``,
        ``fail_randomly``, ``hang``, ``injected``); ``/_sandbox/fail`` over HTTP."""
        return self._controls

    @property
    def token_path(self) -> str:
        return f"/auth/realms/{self.realm}/protocol/openid-connect/token"

    # -- controls --------------------------------------------------------------------------

    def revoke_sessions(self) -> int:
        """Kill every SSO session (like an admin logout or a restart); returns how many."""
        count = len(self._sessions)
        self._sessions.clear()
        return count

    def fail_with(self, status: int | None, *, count: int | None = None) -> None:
        """Answer the next ``count`` token calls (all if None) with ``status``.

        ``status=None`` (or ``count=0``) clears the failure.
        """
        self._controls.fail_with(status, count)

    def hang(self, enabled: bool) -> None:
        """While enabled, token calls wait and never answer (until disabled or shutdown)."""
        self._controls.hang(enabled)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self._calls,
            "by_grant": dict(self._by_grant),
            "max_concurrent": self._controls.max_concurrent,
            "in_flight": self._controls.in_flight,
            "sessions": len(self._sessions),
            "events": [dict(e) for e in self._controls.events],
        }

    def reset_stats(self) -> None:
        self._calls = 0
        self._by_grant.clear()
        self._controls.reset_stats()

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SETTINGS}

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
        self, request: web.Request, form: Mapping[str, str], client_id: str
    ) -> dict[str, Any]:
        """MOEX two-factor login. Past client authentication (Keycloak's own 401s), every
        failure is a 403, the only answer MOEX documents."""
        if self.clients.get(client_id) is None:
            raise _passport_denied("Passport login requires a confidential client")
        for name in _PASSPORT_FIELDS:
            if not form.get(name):
                raise _passport_denied(f"Missing parameter: {name}")
        algorithm = form["algorithm"]
        # Checked first: openssl here has no GOST support, so a GOST signature would only
        # fail later with a less helpful reason.
        if algorithm == "GOST":
            raise _passport_denied(_GOST_UNSUPPORTED)
        if algorithm != "RSA":
            raise _passport_denied("algorithm must be GOST or RSA")
        if self.passport is None or self.ca_file is None:
            raise _passport_denied("MOEX Passport login is not configured in this sandbox")

        token = form["certificate"]
        user = self.passport.token_valid(token)
        if user is None:
            raise _passport_denied("Unknown or expired MOEX Passport token" + _plus_hint(token))
        signature = form["signature"]
        if "\n" in signature or "\r" in signature:
            raise _passport_denied("signature must be base64 without line breaks")
        try:
            der = base64.b64decode(signature, validate=True)
        except ValueError:
            raise _passport_denied(
                "signature is not valid base64" + _plus_hint(signature)
            ) from None
        try:
            # Detached: the signature covers exactly the token's bytes, nothing added.
            verified = await verify_cms(
                der, ca_file=self.ca_file, detached_content=token.encode("ascii")
            )
        except CmsInvalid as exc:
            raise _passport_denied(f"signature does not verify: {exc.reason}") from None
        try:
            # openssl also accepts an attached signature when given the content; MOEX asks
            # for a detached one, so one that verifies on its own is refused.
            await verify_cms(der, ca_file=self.ca_file)
        except CmsInvalid:
            pass
        else:
            raise _passport_denied("signature must be detached (it carries the token inside)")
        registered = self.passport.signers.get(user)
        if registered is None:
            raise _passport_denied(f"no signing certificate is registered for {user}")
        der_cert = serialization.Encoding.DER
        if verified.signer.public_bytes(der_cert) != registered.public_bytes(der_cert):
            raise _passport_denied(f"the signer is not the certificate registered for {user}")
        if not isinstance(verified.signer.public_key(), rsa.RSAPublicKey):
            raise _passport_denied("algorithm RSA does not match the signer's key")
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

    async def _grant(self, request: web.Request, form: Mapping[str, str]) -> web.Response:
        try:
            if request.match_info["realm"] != self.realm:
                return web.json_response({"error": "Realm does not exist"}, status=404)
            grant = form.get("grant_type")
            if not grant:
                raise OAuthError(400, "invalid_request", "Missing form parameter: grant_type")
            if grant not in _SUPPORTED_GRANTS:
                raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type")
            client_id = self._authenticate_client(request, form)
            if grant == "password" and form.get("grant_type_moex") == "passport":
                body = await self._passport_grant(request, form, client_id)
            elif grant == "password":
                body = self._password_grant(request, form, client_id)
            elif grant == "refresh_token":
                body = self._refresh_grant(request, form, client_id)
            else:
                body = self._client_credentials_grant(request, form, client_id)
        except OAuthError as exc:
            return exc.response()
        return web.json_response(body, headers=_NO_STORE)

    # -- HTTP handlers ---------------------------------------------------------------------

    async def _token_handler(self, request: web.Request) -> web.Response:
        event: dict[str, Any] = {"grant": None, "start": time.monotonic()}
        try:
            with self._controls.track(event) as call:
                form = await request.post()
                raw_grant = form.get("grant_type")
                grant = raw_grant if isinstance(raw_grant, str) else None
                if grant == "password" and form.get("grant_type_moex") == "passport":
                    grant = "passport"  # counted apart from plain password logins
                event["grant"] = grant
                response = await self._controls.intercept(
                    self.latency, closed=_shutting_down, failure=_injected_failure
                ) or await self._grant(
                    request, {k: v for k, v in form.items() if isinstance(v, str)}
                )
                return call.done(response)
        finally:
            self._calls += 1
            self._by_grant[event["grant"] or "(missing)"] += 1

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

    async def _revoke_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"revoked_sessions": self.revoke_sessions()})
