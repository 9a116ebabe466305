"""A Kazakhstan ИС МПТ "true API" for the sandbox (docs/protocols.md, "MPT").

The login is CRPT's challenge-response, as in Russia's Честный знак:

1. ``GET {base}/auth/key`` → ``{"uuid", "data"}``: ``data`` is a random string in base64
   (32 random bytes, as MPT's guide describes it), living ``challenge_ttl`` seconds and
   usable once. MPT's guide spells the id ``UUID`` in its tables and ``uuid`` in its text:
   ``uuid_field`` sets the spelling of the answer, and sign-in takes it in any case.
2. The client signs the UTF-8 bytes of ``data`` as an **attached** CMS (content
   encapsulated, signer certificate included).
3. ``POST {base}/auth/simpleSignIn`` ``{"uuid", "data": "<base64 CMS>", ...}`` →
   ``{"token": "<JWT>"}``. Extra fields (``inn``, ``unitedToken``, ...) are recorded, and
   ``inn`` goes into the token.

The signature is checked for real, by ``openssl cms -verify`` against the sandbox CA
(``sidecar.sandbox.cms``). Tokens are HS256 JWTs with ``exp`` = now + ``token_ttl``
(10 h like the Russian API's), so clients can plan renewal from ``exp``; only this emulator
can validate them. Every other path under ``{base}/`` is the API: it wants ``Authorization:
Bearer <token>`` and echoes what it received, streaming the body.

Sign-in failures are 403 ``{"error_message", "code", "description"}`` where ``code`` is one
of the reason codes below [A: the sandbox's own numbering; Честный знак answers a detached
signature with "Ошибка авторизации. Код ошибки: 2", hence code 2 for every unusable
signature]. The uuid is spent even when the signature then fails: a challenge is single-use.

====  ====================  =====================================================
code  reason                when
====  ====================  =====================================================
1     unknown_uuid          the uuid was never issued here (or long forgotten)
2     bad_signature         not a valid attached CMS (a detached one included)
3     challenge_expired     the challenge is older than ``challenge_ttl``
4     challenge_used        the challenge was already presented once
5     content_mismatch      the signed content is not the challenge's ``data``
6     untrusted_signer      the signer certificate does not chain to the sandbox CA
7     bad_base64            ``data`` is not base64
====  ====================  =====================================================

A malformed request (not JSON, no ``uuid`` or ``data``) is 400 and spends nothing; a
non-JSON content type is 415. API calls without a live token get 401 ``{"error_message",
"code": 401}``. Fault injection (for the two auth endpoints), statistics and token expiry
are available as Python methods and over HTTP under ``/_sandbox/``.
"""

from __future__ import annotations

import base64
import secrets
import ssl
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from sidecar.sandbox import controls, jwts
from sidecar.sandbox.cms import CmsInvalid, verify_cms
from sidecar.sandbox.emulator import LOOPBACK_HOSTS, MAX_EVENTS, Emulator
from sidecar.sandbox.inbound import bearer_token, hash_body, request_summary
from sidecar.sandbox.ncanode_signing import java_b64decode
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import TlsServer

__all__ = ["DEFAULT_BASE_PATH", "REJECTIONS", "MptApi", "Rejection", "start_mpt"]

DEFAULT_BASE_PATH = "/api/v3/true-api"
_CHALLENGE_BYTES = 32  # base64: 44 characters, "=" at the end, often "+" or "/" inside
_FORGET_AFTER = 600.0  # seconds a spent or expired challenge is remembered, to name the reason
_MAX_CHALLENGES = 100_000  # bound memory if a client fetches keys and never signs in
_PRUNE_INTERVAL = 1.0  # seconds between sweeps of dead challenges and tokens
_AUTH_FAILED = "Ошибка авторизации. Код ошибки: {code}"
_UNAUTHORIZED = "Токен авторизации отсутствует или недействителен"


@dataclass(frozen=True)
class Rejection:
    """Why a sign-in was refused: the ``code`` sent to the client and a fixed description."""

    code: int
    reason: str
    description: str


REJECTIONS: dict[str, Rejection] = {
    r.reason: r
    for r in (
        Rejection(1, "unknown_uuid", "Unknown uuid: request a new key with GET /auth/key"),
        Rejection(2, "bad_signature", "The signature is not a valid attached CMS"),
        Rejection(3, "challenge_expired", "The challenge has expired"),
        Rejection(4, "challenge_used", "The challenge has already been used"),
        Rejection(5, "content_mismatch", "The signed data differs from the issued data"),
        Rejection(6, "untrusted_signer", "The signer certificate is not trusted"),
        Rejection(7, "bad_base64", "The signature is not valid base64"),
    )
}


class _SignInRefused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.rejection = REJECTIONS[reason]
        self.detail = detail

    def response(self) -> web.Response:
        rejection = self.rejection
        description = rejection.description + (f": {self.detail}" if self.detail else "")
        body = {
            "error_message": _AUTH_FAILED.format(code=rejection.code),
            "code": rejection.code,
            "description": description,
        }
        return web.json_response(body, status=403)


@dataclass
class _Challenge:
    data: str
    expires_at: float  # time.monotonic()
    used: bool = False


def _error(status: int, message: str, description: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error_message": message, "code": status}
    if description is not None:
        body["description"] = description
    return web.json_response(body, status=status)


def _token_field(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else cert.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class MptApi(Emulator):
    """The ИС МПТ auth endpoints and API under ``base_path``, with sandbox controls.

    ``ca_file`` is the CA that signer certificates must chain to. Settings are plain
    attributes, read on every call (``api.token_ttl = 3``). The controlled calls are the
    two auth calls, ``/auth/key`` and ``/auth/simpleSignIn``.
    """

    SETTINGS: ClassVar[dict[str, controls.Validator]] = {
        "challenge_ttl": controls.finite_number,
        "token_ttl": controls.finite_number,
        "token_field": _token_field,
        "uuid_field": _token_field,
        "latency": controls.finite_number,
    }

    def __init__(
        self,
        ca_file: Path,
        *,
        base_path: str = DEFAULT_BASE_PATH,
        challenge_ttl: float = 60,
        token_ttl: float = 36000,
        token_field: str = "token",
        uuid_field: str = "uuid",
        latency: float = 0.0,
    ) -> None:
        if not token_field:
            raise ValueError("token_field must not be empty")
        super().__init__()
        self.ca_file = Path(ca_file)
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.challenge_ttl = challenge_ttl
        self.token_ttl = token_ttl
        self.token_field = token_field  # the response field holding the token
        self.uuid_field = uuid_field  # the /auth/key field holding the challenge id
        self.latency = latency

        self._key = secrets.token_bytes(32)
        # Every token handed out (bounded), so a test can check none of them leaked anywhere.
        self.issued: deque[str] = deque(maxlen=MAX_EVENTS)
        self._challenges: OrderedDict[str, _Challenge] = OrderedDict()
        self._tokens: dict[str, float] = {}  # jti -> expiry, time.monotonic()
        self._next_prune = 0.0

        self._keys_issued = 0
        self._signins = 0
        self._rejected: Counter[str] = Counter()
        self._reused = 0
        self._requests = 0
        self._unauthorized = 0
        self.last_signin: dict[str, Any] | None = None
        self.last_request: dict[str, Any] | None = None

        router = self._app.router
        router.add_route("*", self.key_path, self._key_handler)
        router.add_route("*", self.signin_path, self._signin_handler)
        self.add_action_route("/_sandbox/expire", "expired", self.expire_tokens)
        self.add_sandbox_routes(none_status=True)
        router.add_route("*", "/{tail:.*}", self._api_handler)

    @property
    def key_path(self) -> str:
        return f"{self.base_path}/auth/key"

    @property
    def signin_path(self) -> str:
        return f"{self.base_path}/auth/simpleSignIn"

    # -- controls --------------------------------------------------------------------------

    def expire_tokens(self) -> int:
        """Expire every token now; returns how many were still live."""
        now = time.monotonic()
        live = sum(1 for expires_at in self._tokens.values() if now < expires_at)
        for jti in self._tokens:
            self._tokens[jti] = min(self._tokens[jti], now)
        return live

    def stats(self) -> dict[str, Any]:
        """``signins`` counts tokens issued, ``rejected`` refusals by reason (see REJECTIONS),
        ``reused`` attempts with a spent uuid, ``requests``/``unauthorized`` API calls."""
        return {
            "keys_issued": self._keys_issued,
            "signins": self._signins,
            "rejected": dict(self._rejected),
            "reused": self._reused,
            "requests": self._requests,
            "unauthorized": self._unauthorized,
            **self.call_stats(),
            "last_signin": self.last_signin,
            "last_request": self.last_request,
        }

    def reset_stats(self) -> None:
        super().reset_stats()
        self._keys_issued = 0
        self._signins = 0
        self._rejected.clear()
        self._reused = 0
        self._requests = 0
        self._unauthorized = 0
        self.last_signin = None
        self.last_request = None

    def answer_failure(self, status: int) -> web.Response:
        return _error(status, controls.failure_text(status), "sandbox fault")

    def answer_closed(self) -> web.Response:
        return _error(503, "Service Unavailable", "Server is shutting down")

    # -- tokens ----------------------------------------------------------------------------

    def introspect(self, token: str) -> dict[str, Any] | None:
        """Claims of a live token issued here, or None if it is not usable."""
        claims = self._verify(token)
        if claims is None:
            return None
        expires_at = self._tokens.get(str(claims.get("jti")))
        if expires_at is None or time.monotonic() >= expires_at:
            return None
        return claims

    def is_token_valid(self, token: str) -> bool:
        return self.introspect(token) is not None

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwts.sign(self._key, claims)

    def _verify(self, token: str) -> dict[str, Any] | None:
        return jwts.verify(self._key, token)

    def _issue_token(self, subject: str, inn: str | None) -> str:
        now = time.monotonic()
        wall = time.time()
        ttl = max(0.0, float(self.token_ttl))
        # exp is rounded down so a client trusting it never uses a dead token; the precise
        # deadline lives in self._tokens.
        claims: dict[str, Any] = {
            "iat": int(wall),
            "exp": int(wall + ttl),
            "sub": subject,
            "jti": str(uuid.uuid4()),
        }
        if inn is not None:
            claims["inn"] = inn
        self._tokens[claims["jti"]] = now + ttl
        token = self._sign(claims)
        self.issued.append(token)
        return token

    def _prune(self, now: float) -> None:
        """Forget dead challenges and tokens so long runs do not grow memory without bound."""
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_INTERVAL
        # Challenges are kept in issue order, so the oldest come first (if challenge_ttl is
        # changed at runtime a few may linger a little longer, which is harmless).
        while self._challenges:
            oldest = next(iter(self._challenges.values()))
            if now < oldest.expires_at + _FORGET_AFTER:
                break
            self._challenges.popitem(last=False)
        for jti in [j for j, expires_at in self._tokens.items() if now >= expires_at]:
            del self._tokens[jti]

    # -- auth ------------------------------------------------------------------------------

    def _new_challenge(self) -> dict[str, str]:
        now = time.monotonic()
        self._prune(now)
        challenge_id = str(uuid.uuid4())
        data = base64.b64encode(secrets.token_bytes(_CHALLENGE_BYTES)).decode("ascii")
        self._challenges[challenge_id] = _Challenge(data, now + float(self.challenge_ttl))
        while len(self._challenges) > _MAX_CHALLENGES:
            self._challenges.popitem(last=False)
        self._keys_issued += 1
        return {self.uuid_field: challenge_id, "data": data}

    def _spend_challenge(self, challenge_id: str) -> _Challenge:
        """Check the uuid is known, unused and unexpired, and mark it used."""
        challenge = self._challenges.get(challenge_id)
        if challenge is None:
            raise _SignInRefused("unknown_uuid")
        if challenge.used:
            self._reused += 1
            raise _SignInRefused("challenge_used")
        # Spent before any check that can fail or await: a challenge is single-use, and a
        # concurrent second attempt with the same uuid must see it used.
        challenge.used = True
        if time.monotonic() >= challenge.expires_at:
            raise _SignInRefused("challenge_expired")
        return challenge

    async def _sign_in(self, request: web.Request, event: dict[str, Any]) -> web.Response:
        if request.content_type != "application/json":
            await request.read()
            return _error(415, "Unsupported Media Type", "Content-Type must be application/json")
        try:
            payload = await request.json()
        except ValueError:  # json.JSONDecodeError, or a body that is not UTF-8
            return _error(400, "Некорректный запрос", "The body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "Некорректный запрос", "The body must be a JSON object")
        # "uuid" in any case: MPT's guide writes both "UUID" and "uuid".
        uuid_key = next((k for k in payload if k.lower() == "uuid"), "uuid")
        challenge_id, signature = payload.get(uuid_key), payload.get("data")
        if not isinstance(challenge_id, str) or not isinstance(signature, str):
            return _error(400, "Некорректный запрос", "uuid and data are required strings")
        fields = {k: v for k, v in payload.items() if k not in (uuid_key, "data")}
        inn = fields.get("inn")
        event.update(uuid=challenge_id, fields=fields)

        challenge = self._spend_challenge(challenge_id)
        try:
            der = java_b64decode(signature)
        except ValueError as exc:
            raise _SignInRefused("bad_base64", str(exc)) from None
        try:
            verified = await verify_cms(der, ca_file=self.ca_file, detached_content=None)
        except CmsInvalid as exc:
            # cms.py words chain failures "certificate ..."; anything else is the CMS itself.
            reason = (
                "untrusted_signer" if exc.reason.startswith("certificate ") else "bad_signature"
            )
            raise _SignInRefused(reason, exc.reason) from None
        if verified.content != challenge.data.encode("utf-8"):
            raise _SignInRefused("content_mismatch")
        subject = _common_name(verified.signer)
        token = self._issue_token(subject, inn if isinstance(inn, str) else None)
        self._signins += 1
        self.last_signin = {"uuid": challenge_id, "sub": subject, "fields": fields}
        event["sub"] = subject
        return web.json_response({self.token_field: token})

    async def _auth_call(
        self,
        request: web.Request,
        endpoint: str,
        method: str,
        answer: Callable[[web.Request, dict[str, Any]], Awaitable[web.Response]],
    ) -> web.Response:
        """Run one auth endpoint with the sandbox's hang, latency, faults and stats."""
        event: dict[str, Any] = {"endpoint": endpoint, "start": time.monotonic()}
        with self._controls.track(event) as call:
            if request.method != method:
                await request.read()
                return call.done(_error(405, "Method Not Allowed", f"Use {method} {request.path}"))
            response = await self.intercept()
            if response is not None:
                await request.read()
            else:
                try:
                    response = await answer(request, event)
                except _SignInRefused as exc:
                    self._rejected[exc.rejection.reason] += 1
                    event["reason"] = exc.rejection.reason
                    response = exc.response()
            return call.done(response)

    async def _answer_key(self, request: web.Request, event: dict[str, Any]) -> web.Response:
        await request.read()
        challenge = self._new_challenge()
        event["uuid"] = challenge[self.uuid_field]
        return web.json_response(challenge)

    # -- HTTP handlers ---------------------------------------------------------------------

    async def _key_handler(self, request: web.Request) -> web.Response:
        return await self._auth_call(request, "key", "GET", self._answer_key)

    async def _signin_handler(self, request: web.Request) -> web.Response:
        return await self._auth_call(request, "signin", "POST", self._sign_in)

    async def _api_handler(self, request: web.Request) -> web.Response:
        path = request.path
        if not (self.base_path == "" or path.startswith(self.base_path + "/")):
            await hash_body(request)
            return _error(404, "Not Found", f"No API at {path}")
        token = bearer_token(request.headers.get("Authorization"))
        claims = self.introspect(token) if token is not None else None
        if claims is None:
            self._unauthorized += 1
            # Read the body first: answering early and closing would make the client see a
            # reset instead of the 401.
            await hash_body(request)
            return _error(401, _UNAUTHORIZED)
        self._requests += 1
        summary = request_summary(request, token_sub=claims.get("sub"), request_no=self._requests)
        summary["body_sha256"], summary["body_length"] = await hash_body(request)
        self.last_request = summary
        return web.json_response(summary)


async def start_mpt(pki: Pki, *, port: int = 0, **settings: Any) -> tuple[MptApi, TlsServer]:
    """Start the API on https://127.0.0.1:``port`` with a server cert ("mpt") from ``pki``.

    Client certificates are not required; one signed by the sandbox CA is accepted if the
    client offers it, so the echo can report it. ``settings`` are ``MptApi`` keyword
    arguments. Stop it with ``server.stop()``.
    """
    api = MptApi(pki.ca_file, **settings)
    context = pki.server_ssl_context(pki.issue_server("mpt", LOOPBACK_HOSTS))
    # CERT_OPTIONAL asks for a client certificate without demanding one.
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cafile=pki.ca_file)
    server = TlsServer(api.app, context, port=port)
    await server.start()
    return api, server
