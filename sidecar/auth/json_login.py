"""``json_login``: a login of the API's own (JSON or form), described entirely by config.

The request is rendered from ``auth.login`` with the secrets filled in; the answer's parts
are read where ``auth.answer`` says (JSON pointer, header or cookie); a failure is sorted by
``auth.failure``. Reasons never quote a secret, a token or an answer's values: a part that
is missing is reported with the answer's top-level keys only.
"""

from __future__ import annotations

import json
import ssl
import time
from datetime import UTC, datetime
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import structlog

from sidecar.auth.base import MAX_LIFETIME, AuthError, Failure, Grant, InvalidGrant
from sidecar.auth.http import Fetched, Fetcher, idp_error, short
from sidecar.auth.jwt import expiry
from sidecar.config.auth import JsonLoginAuth
from sidecar.config.json_login import PLACEHOLDER, LoginRequest
from sidecar.http1.dial import Dialer
from sidecar.http1.errors import TransportError
from sidecar.http1.retry_after import parse_retry_after

log = structlog.get_logger("sidecar.auth")

_MISSING = object()


def resolve_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901: the value at ``pointer``, or ``_MISSING``."""
    if pointer == "":
        return document
    current = document
    for raw in pointer[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def render(value: Any, secrets: dict[str, str]) -> Any:
    """``value`` with every ``{name}`` in its strings replaced (names checked by config)."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: secrets.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: render(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, secrets) for v in value]
    return value


class _Answer:
    """One answer, its JSON parsed once (when a part is read from the body)."""

    def __init__(self, reply: Fetched) -> None:
        self.reply = reply
        self._json: Any = _MISSING

    @property
    def document(self) -> Any:
        if self._json is _MISSING:
            try:
                self._json = json.loads(self.reply.body)
            except (ValueError, UnicodeDecodeError):
                self._json = None
        return self._json

    def part(self, location: str) -> Any:
        kind, _, name = location.partition(":")  # a pointer starts with "/": kind is not
        if kind == "header":
            value = self.reply.headers.get(name)
            return _MISSING if value is None else value
        if kind == "cookie":
            for header in self.reply.headers.getall("Set-Cookie", ()):
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(header)
                except CookieError:
                    continue
                if name in jar:
                    return jar[name].value
            return _MISSING
        document = self.document
        return _MISSING if document is None else resolve_pointer(document, location)

    def keys(self) -> str:
        """The answer's top-level keys (never its values), for a pointer that missed."""
        document = self.document
        if isinstance(document, dict):
            return "its top-level keys: " + (", ".join(short(k, 40) for k in list(document)[:20])
                                             or "none")
        if document is None:
            return "it is not JSON"
        return f"it is a JSON {type(document).__name__}, not an object"


class JsonLoginFlow:
    grant_type = "json_login"

    def __init__(
        self, auth: JsonLoginAuth, ssl_context: ssl.SSLContext, dialer: Dialer | None = None
    ) -> None:
        self._auth = auth
        self._http = Fetcher(ssl_context, auth.timeout, dialer)
        self._secrets = {name: s.get_secret_value() for name, s in auth.secrets.items()}
        if auth.username is not None:
            self._secrets["username"] = auth.username
        if auth.password is not None:
            self._secrets["password"] = auth.password.get_secret_value()
        self._warned: set[str] = set()  # optional parts reported missing, once each

    async def login(self) -> Grant:
        return await self._call("login", self._auth.login, self._secrets)

    async def refresh(self, refresh_token: str) -> Grant:
        request = self._auth.refresh
        if request is None:  # no refresh configured: the manager logs in instead
            raise InvalidGrant("no refresh configured", kind=Failure.REFUSED)
        try:
            return await self._call(
                "refresh", request, {**self._secrets, "refresh_token": refresh_token}
            )
        except AuthError as exc:
            if exc.kind is Failure.REFUSED and not isinstance(exc, InvalidGrant):
                # A refused refresh never retries with the same token: log in afresh.
                raise InvalidGrant(exc.reason, kind=Failure.REFUSED, status=exc.status) from None
            raise

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        self._http.renew_tls(ssl_context)

    async def close(self) -> None:
        await self._http.close()

    # -- one call --------------------------------------------------------------------------

    async def _call(self, what: str, request: LoginRequest, values: dict[str, str]) -> Grant:
        host = urlsplit(request.url).hostname or request.url
        where = f"{what} at {host}"
        headers = {"Accept": "application/json", **render(request.headers, values)}
        try:
            reply = await self._http.request(
                request.method,
                request.url,
                form=render(request.form, values) if request.form is not None else None,
                json_body=render(request.json_body, values),
                headers=headers,
            )
        except TransportError as exc:
            raise idp_error(where, exc) from None
        answer = _Answer(reply)
        self._check_failure(where, answer)
        return self._grant(where, answer)

    def _check_failure(self, where: str, answer: _Answer) -> None:
        reply, rules = answer.reply, self._auth.failure
        text = reply.body[:65536].decode("utf-8", "replace")
        reason = f"{where} answered {reply.status}"
        detail = short(text.strip(), 200)
        if detail and not 200 <= reply.status < 300:
            reason += f": {detail}"
        retry_after = parse_retry_after(reply.headers.get("Retry-After"))
        if any(s in text for s in rules.retry.body_contains):
            kind = Failure.UNAVAILABLE
        elif any(s in text for s in rules.refused.body_contains):
            kind = Failure.REFUSED
        elif reply.status in rules.refused.statuses:
            kind = Failure.REFUSED
        elif reply.status in rules.retry.statuses:
            kind = Failure.UNAVAILABLE
        elif 200 <= reply.status < 300:
            return
        else:
            raise AuthError.answered(reply.status, reason, retry_after)
        raise AuthError(reason, kind=kind, status=reply.status, retry_after=retry_after)

    def _grant(self, where: str, answer: _Answer) -> Grant:
        parts = self._auth.answer
        refresh: str | None = None
        if parts.refresh_token is not None:
            value = answer.part(parts.refresh_token)
            if isinstance(value, str) and value:
                refresh = value
            else:
                self._warn_once("answer.refresh_token", where, parts.refresh_token, answer)
        token = answer.part(parts.token)
        if not isinstance(token, str) or not token:
            missing = "no token" if token is _MISSING else "a token that is not a string"
            raise AuthError(
                f"{where} answered {answer.reply.status} with {missing} at {parts.token} "
                f"(auth.answer.token); {answer.keys()}",
                refresh_token=refresh,
            )
        prefix = self._auth.token_prefix
        if prefix and token.startswith(prefix):  # some APIs hand out "Bearer ey..."
            token = token[len(prefix):]
        refresh_life = None
        if parts.refresh_expires_in is not None and refresh is not None:
            refresh_life = self._number(where, answer, parts.refresh_expires_in,
                                        "refresh_expires_in")
            if refresh_life is not None and parts.expires_in_unit == "ms":
                refresh_life /= 1000
        try:
            return Grant(access_token=token, expires_in=self._lifetime(where, answer, token),
                         refresh_token=refresh, refresh_expires_in=refresh_life)
        except AuthError as exc:
            exc.refresh_token = refresh
            raise

    def _lifetime(self, where: str, answer: _Answer, token: str) -> float:
        parts = self._auth.answer
        if parts.expires_in is not None:
            seconds = self._number(where, answer, parts.expires_in, "expires_in")
            if seconds is not None:
                return _bounded(where, seconds / (1000 if parts.expires_in_unit == "ms" else 1))
        if parts.expires_at is not None:
            at = self._timestamp(where, answer, parts.expires_at)
            if at is not None:
                return _bounded(where, at - time.time())
        exp = expiry(token)
        if exp is not None:
            return _bounded(where, exp - time.time())
        if self._auth.token_ttl is not None:
            return self._auth.token_ttl
        raise AuthError(
            f"{where}: nothing says how long the token lives (no expires_in, expires_at or "
            "JWT exp); set auth.answer.expires_in or auth.token_ttl"
        )

    def _number(self, where: str, answer: _Answer, location: str, name: str) -> float | None:
        value = answer.part(location)
        if value is _MISSING or value is None:
            self._warn_once(f"answer.{name}", where, location, answer)
            return None
        from_text = location.startswith(("header:", "cookie:"))
        if isinstance(value, str) and not from_text and not self._auth.answer.expires_in_string:
            raise AuthError(
                f"{where}: {name} at {location} came as a string; set "
                "auth.answer.expires_in_string: true if the API means it"
            )
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise AuthError(f"{where}: {name} at {location} is not a number")
        try:
            number = float(value)
        except ValueError:
            raise AuthError(f"{where}: {name} at {location} is not a number") from None
        return number

    def _timestamp(self, where: str, answer: _Answer, location: str) -> float | None:
        value = answer.part(location)
        if value is _MISSING or value is None:
            self._warn_once("answer.expires_at", where, location, answer)
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value / (1000 if self._auth.answer.expires_at_unit == "ms" else 1)
        if isinstance(value, str):
            try:
                at = datetime.fromisoformat(value)
            except ValueError:
                raise AuthError(f"{where}: expires_at at {location} is not ISO 8601") from None
            return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
        raise AuthError(f"{where}: expires_at at {location} is neither a number nor a date")

    def _warn_once(self, field: str, where: str, location: str, answer: _Answer) -> None:
        if field in self._warned:
            return
        self._warned.add(field)
        log.warning("json_login_part_missing", field=f"auth.{field}", location=location,
                    call=where, answer=answer.keys())


def _bounded(where: str, seconds: float) -> float:
    if seconds != seconds or seconds <= 0:
        raise AuthError(f"{where}: the answer gives an unusable lifetime ({seconds:g} s)")
    return min(seconds, MAX_LIFETIME)
