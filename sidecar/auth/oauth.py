"""The HTTP call to an OAuth2 token endpoint, and the answers' meaning (RFC 6749 section 5).

Only this module talks to token endpoints; errors come back as :class:`AuthError` with a
reason fit for logs and for the app (never a token or a secret).
"""

from __future__ import annotations

import base64
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from sidecar.auth.base import MAX_LIFETIME, AuthError, Failure, Grant, InvalidGrant
from sidecar.auth.http import idp_error, short
from sidecar.http1.dial import Dialer
from sidecar.http1.errors import TransportError
from sidecar.http1.fetch import Fetcher
from sidecar.http1.retry_after import parse_retry_after


class TokenEndpoint:
    """Posts forms to one token URL; each call is one short TLS connection (calls are minutes
    apart: a kept connection would only go stale)."""

    def __init__(
        self, url: str, ssl_context: ssl.SSLContext, timeout: float, dialer: Dialer | None = None
    ) -> None:
        self.url = url
        self.host = urlsplit(url).hostname or url
        self._http = Fetcher(ssl_context, timeout, dialer)

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        self._http.renew_tls(ssl_context)

    async def request_token(self, form: dict[str, str], authorization: str | None = None) -> Grant:
        headers = {"Accept": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        try:
            reply = await self._http.request("POST", self.url, form=form, headers=headers)
            body, status = reply.body, reply.status
            retry_after = reply.headers.get("Retry-After")
        except TransportError as exc:
            raise idp_error(f"IdP {self.host}", exc) from None
        return parse_token_response(status, body, retry_after)

    async def close(self) -> None:
        await self._http.close()


def parse_token_response(status: int, body: bytes, retry_after: str | None = None) -> Grant:
    """Turn a token endpoint's answer into a Grant or a clear AuthError."""
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if status != 200:
        raise _error(status, data, retry_after)
    if not isinstance(data, dict):
        raise AuthError("IdP answered 200 without a JSON object")
    refresh = data.get("refresh_token")
    refresh = refresh if isinstance(refresh, str) and refresh else None
    try:
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError("IdP answered 200 without an access_token")
        return Grant(
            access_token=token,
            expires_in=_seconds(data, "expires_in"),
            refresh_token=refresh,
            refresh_expires_in=_seconds(data, "refresh_expires_in", allow_zero=True),
        )
    except AuthError as exc:
        exc.refresh_token = refresh
        raise


def _seconds(data: dict[str, Any], key: str, *, allow_zero: bool = False) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise AuthError(f"IdP answered an unusable {key}: not a number") from None
    if seconds != seconds or seconds < 0 or (seconds == 0 and not allow_zero):
        raise AuthError(f"IdP answered an unusable {key}: {seconds:g}")
    return min(seconds, MAX_LIFETIME)


def _error(status: int, data: Any, retry_after: str | None) -> AuthError:
    code = description = None
    if isinstance(data, dict):
        code = data.get("error") if isinstance(data.get("error"), str) else None
        desc = data.get("error_description")
        description = short(desc) if isinstance(desc, str) else None
    reason = f"IdP answered {status}"
    if code:
        reason += f" {short(code)}"
    if description:
        reason += f": {description}"
    elif data is None:
        reason += " with a non-JSON body"
    wait = parse_retry_after(retry_after)
    if code == "invalid_grant":
        return InvalidGrant(reason, kind=Failure.REFUSED, status=status)
    return AuthError.answered(status, reason, wait)


class OAuthFlow:
    """Shared by the OAuth2 flows: client fields and the standard refresh_token grant."""

    grant_type = "oauth2"

    def __init__(
        self,
        endpoint: TokenEndpoint,
        client_id: str | None,
        client_secret: str | None,
        scope: str | None,
        *,
        basic_auth: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self._basic = (
            basic_authorization(client_id, client_secret or "")
            if basic_auth and client_id
            else None
        )

    async def _post(self, form: dict[str, str]) -> Grant:
        """Client authentication in the form (Keycloak) or as HTTP Basic (WSO2)."""
        if self._basic is None:
            if self.client_id:
                form["client_id"] = self.client_id
            if self.client_secret:
                form["client_secret"] = self.client_secret
        return await self.endpoint.request_token(form, self._basic)

    async def refresh(self, refresh_token: str) -> Grant:
        return await self._post({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        self.endpoint.renew_tls(ssl_context)

    async def close(self) -> None:
        await self.endpoint.close()


def basic_authorization(user: str, password: str) -> str:
    """``Basic base64(user:password)``, as WSO2's token endpoint and ``curl -u`` send it."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class PasswordGrant(OAuthFlow):
    """The resource-owner password grant (RFC 6749 §4.3): Keycloak and WSO2 alike."""

    grant_type = "password"

    def __init__(
        self,
        endpoint: TokenEndpoint,
        client_id: str | None,
        client_secret: str | None,
        scope: str | None,
        username: str,
        password: SecretStr,
        *,
        basic_auth: bool = False,
    ) -> None:
        super().__init__(endpoint, client_id, client_secret, scope, basic_auth=basic_auth)
        self._username = username
        self._password = password

    async def login(self) -> Grant:
        form = {
            "grant_type": "password",
            "username": self._username,
            "password": self._password.get_secret_value(),
        }
        if self.scope:
            form["scope"] = self.scope
        return await self._post(form)
