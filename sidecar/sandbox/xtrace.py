"""Kazakhstan's ИС МПТ xTrace 1.0 auth for the sandbox: a login of its own, not OAuth.

As the public integration notes of its users describe it:

- ``POST /api/users/authenticate`` JSON ``{"login", "password"}`` →
  ``{"accessToken", "refreshToken", "expiresIn": "1800000"}``: the lifetime in milliseconds,
  sent as a **string** (30 minutes by default, ``access_ttl``);
- ``POST /api/users/tokens/refresh`` **form-encoded** ``refreshToken=…`` → a new pair; the
  refresh token is single-use (rotation: the old one is dead once used);
- every call needs ``Accept: */*``: without it the answer is 406 with an empty body;
- API calls (any other path under ``/api/``) want ``Authorization: Bearer <accessToken>``;
  a dead or unknown token gets 401.

[A: the error bodies are the sandbox's own: ``{"code", "message"}``; a refused login and
a dead refresh token are 401.] Tokens are opaque random strings. The controlled calls are
the two auth calls: ``/_sandbox/fail``, ``hang``, ``stats``, ``settings`` and ``expire``.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any, ClassVar

from aiohttp import web

from sidecar.sandbox import controls
from sidecar.sandbox.emulator import LOOPBACK_HOSTS, MAX_EVENTS, Emulator
from sidecar.sandbox.inbound import bearer_token, drain, hash_body, request_summary
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import TlsServer

__all__ = ["LOGIN_PATH", "REFRESH_PATH", "XtraceApi", "start_xtrace"]

LOGIN_PATH = "/api/users/authenticate"
REFRESH_PATH = "/api/users/tokens/refresh"
DEFAULT_USERS = {"sandbox-user": "sandbox-password"}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


def _acceptable(request: web.Request) -> bool:
    return any(part.split(";")[0].strip() == "*/*"
               for part in request.headers.get("Accept", "").split(","))


class XtraceApi(Emulator):
    """The xTrace auth endpoints and an echoing API behind them, with sandbox controls.

    Settings (plain attributes, read on every call): ``access_ttl`` and ``refresh_ttl`` in
    seconds, ``latency``."""

    SETTINGS: ClassVar[dict[str, controls.Validator]] = {
        "access_ttl": controls.finite_number,
        "refresh_ttl": controls.finite_number,
        "latency": controls.finite_number,
    }

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        access_ttl: float = 1800.0,
        refresh_ttl: float = 86400.0,
        latency: float = 0.0,
    ) -> None:
        super().__init__()
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.latency = latency
        self.issued: deque[str] = deque(maxlen=MAX_EVENTS)  # every token, to look for leaks
        self._access: dict[str, tuple[str, float]] = {}  # token -> (login, monotonic expiry)
        self._refresh: dict[str, tuple[str, float]] = {}
        self.reset_stats()

        router = self._app.router
        router.add_route("*", LOGIN_PATH, self._login_handler)
        router.add_route("*", REFRESH_PATH, self._refresh_handler)
        self.add_action_route("/_sandbox/expire", "expired", self.expire_tokens)
        self.add_sandbox_routes(none_status=True)
        router.add_route("*", "/{tail:.*}", self._api_handler)

    # -- controls --------------------------------------------------------------------------

    def expire_tokens(self) -> int:
        """Expire every access token now (refresh tokens live on); how many were live."""
        now = time.monotonic()
        live = sum(1 for _, at in self._access.values() if now < at)
        self._access = {t: (who, min(at, now)) for t, (who, at) in self._access.items()}
        return live

    def is_token_valid(self, token: str) -> bool:
        entry = self._access.get(token)
        return entry is not None and time.monotonic() < entry[1]

    def stats(self) -> dict[str, Any]:
        """``logins``/``refreshes`` issued pairs; ``refused`` logins; ``refresh_rejected``
        dead or reused refresh tokens; ``requests``/``unauthorized``/``not_acceptable`` API
        and auth calls by outcome."""
        return {
            "logins": self._logins,
            "refreshes": self._refreshes,
            "refused": self._refused,
            "refresh_rejected": self._refresh_rejected,
            "requests": self._requests,
            "unauthorized": self._unauthorized,
            "not_acceptable": self._not_acceptable,
            **self.call_stats(),
            "last_request": self.last_request,
        }

    def reset_stats(self) -> None:
        super().reset_stats()
        self._logins = self._refreshes = self._refused = self._refresh_rejected = 0
        self._requests = self._unauthorized = self._not_acceptable = 0
        self.last_request: dict[str, Any] | None = None

    def answer_failure(self, status: int) -> web.Response:
        return _error(status, controls.failure_text(status))

    def answer_closed(self) -> web.Response:
        return _error(503, "Service Unavailable")

    # -- tokens ----------------------------------------------------------------------------

    def _issue(self, login: str) -> web.Response:
        now = time.monotonic()
        self._access = {t: e for t, e in self._access.items() if now < e[1] + 60}
        self._refresh = {t: e for t, e in self._refresh.items() if now < e[1]}
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._access[access] = (login, now + float(self.access_ttl))
        self._refresh[refresh] = (login, now + float(self.refresh_ttl))
        self.issued.extend((access, refresh))
        return web.json_response({
            "accessToken": access,
            "refreshToken": refresh,
            "expiresIn": str(int(float(self.access_ttl) * 1000)),  # ms, as a string
        })

    async def _authenticate(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            await drain(request)
            return _error(415, "Content-Type must be application/json")
        try:
            payload = await request.json()
        except ValueError:
            return _error(400, "The body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "The body must be a JSON object")
        login, password = payload.get("login"), payload.get("password")
        if not isinstance(login, str) or not isinstance(password, str):
            return _error(400, "login and password are required strings")
        expected = self.users.get(login)
        if expected is None or not secrets.compare_digest(expected, password):
            self._refused += 1
            return _error(401, "Invalid login or password")
        self._logins += 1
        return self._issue(login)

    async def _renew(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            await drain(request)
            return _error(415, "Content-Type must be application/x-www-form-urlencoded")
        form = await request.post()
        token = form.get("refreshToken")
        entry = self._refresh.pop(token, None) if isinstance(token, str) else None
        if entry is None or time.monotonic() >= entry[1]:
            self._refresh_rejected += 1
            return _error(401, "Refresh token is invalid or expired")
        self._refreshes += 1
        return self._issue(entry[0])

    # -- HTTP handlers ---------------------------------------------------------------------

    async def _auth_call(self, request: web.Request, endpoint: str, answer: Any) -> web.Response:
        event: dict[str, Any] = {"endpoint": endpoint, "start": time.monotonic()}
        with self._controls.track(event) as call:
            if not _acceptable(request):
                await drain(request)
                self._not_acceptable += 1
                return call.done(web.Response(status=406))
            if request.method != "POST":
                await drain(request)
                return call.done(_error(405, f"Use POST {request.path}"))
            response = await self.intercept()
            if response is not None:
                await drain(request)
                return call.done(response)
            return call.done(await answer(request))

    async def _login_handler(self, request: web.Request) -> web.Response:
        return await self._auth_call(request, "login", self._authenticate)

    async def _refresh_handler(self, request: web.Request) -> web.Response:
        return await self._auth_call(request, "refresh", self._renew)

    async def _api_handler(self, request: web.Request) -> web.Response:
        if not request.path.startswith("/api/"):
            await drain(request)
            return _error(404, f"No API at {request.path}")
        if not _acceptable(request):
            await drain(request)
            self._not_acceptable += 1
            return web.Response(status=406)  # empty body, as xTrace answers
        token = bearer_token(request.headers.get("Authorization"))
        entry = self._access.get(token) if token is not None else None
        if entry is None or time.monotonic() >= entry[1]:
            await drain(request)
            self._unauthorized += 1
            return _error(401, "Unauthorized")
        self._requests += 1
        summary = request_summary(request, login=entry[0], request_no=self._requests)
        summary["body_sha256"], summary["body_length"] = await hash_body(request)
        self.last_request = summary
        return web.json_response(summary)


async def start_xtrace(pki: Pki, *, port: int = 0, **settings: Any) -> tuple[XtraceApi, TlsServer]:
    """Start the emulator on https://127.0.0.1:``port`` with a server cert ("xtrace") from
    ``pki``; ``settings`` are ``XtraceApi`` keyword arguments. Stop it with ``server.stop()``."""
    api = XtraceApi(**settings)
    server = TlsServer(api.app, pki.server_ssl_context(pki.issue_server("xtrace", LOOPBACK_HOSTS)),
                       port=port)
    await server.start()
    return api, server


XTRACE_HOST = "test.markirovka.kz"


def xtrace_upstream(
    api: XtraceApi, server_url: str, ca_file: str, password_file: str
) -> dict[str, Any]:
    """The xTrace upstream as config/mpt-xtrace.yaml has it, pointed at this emulator."""
    login = next(iter(api.users))
    accept_any = {"Accept": "*/*"}
    return {
        "match": [XTRACE_HOST],
        "target": server_url,
        "tls": {"ca_file": ca_file},
        "set_headers": {"Accept": "*/*"},
        "auth": {
            "type": "json_login",
            "username": login,
            "password_file": password_file,
            "login": {
                "url": server_url + LOGIN_PATH,
                "json": {"login": "{username}", "password": "{password}"},
                "headers": accept_any,
            },
            "refresh": {
                "url": server_url + REFRESH_PATH,
                "form": {"refreshToken": "{refresh_token}"},
                "headers": accept_any,
            },
            "answer": {
                "token": "/accessToken",
                "refresh_token": "/refreshToken",
                "expires_in": "/expiresIn",
                "expires_in_unit": "ms",
                "expires_in_string": True,
            },
        },
    }
