"""A MOEX Passport-like ``/authenticate`` endpoint for the sandbox (docs/protocols.md).

``GET /authenticate`` with HTTP Basic answers the Passport token in cookie
``MicexPassportCert``. The token is deliberately awkward (base64 with ``+``, ``/`` and
``=``), so a client that does not URL-encode it in the token form, or signs anything but
its exact bytes, fails as it would against MOEX. With ``redirect`` on, success is a 302
with the cookie, as MOEX sometimes answers; clients must read the cookie, not follow it.

The emulator also keeps what the Keycloak ``grant_type_moex=passport`` branch needs: the
live tokens (``token_valid``) and the signing certificate MOEX's CA issued each user
(``signers``); ``check_passport_login`` is that branch's check of the token and its
signature. Fault injection (of the ``/authenticate`` calls) and statistics work as in the
Keycloak emulator, as Python methods and under ``/_sandbox/``.
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
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.sandbox import controls
from sidecar.sandbox.cms import CmsInvalid, verify_cms
from sidecar.sandbox.emulator import MAX_EVENTS, Emulator

__all__ = ["COOKIE_NAME", "MoexPassport", "PassportDenied", "check_passport_login"]

COOKIE_NAME = "MicexPassportCert"
_DEFAULT_USERS: dict[str, str] = {"trader@example.com": "passport-password"}
_PRUNE_INTERVAL = 1.0  # seconds between sweeps of expired tokens
_TOKEN_BYTES = 95  # 95 % 3 == 2: the base64 text always ends with one "="
_REALM_HEADER = {"WWW-Authenticate": 'Basic realm="MOEX Passport"'}
_MARKER = "X-MicexPassport-Marker"
_LOGIN_FIELDS = ("certificate", "algorithm", "signature", "scope")
_GOST_UNSUPPORTED = "GOST signatures are not supported by the sandbox; use RSA"


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


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class MoexPassport(Emulator):
    """The Passport application; settings are attributes read on every call.

    The controlled calls are ``/authenticate``.
    """

    SETTINGS: ClassVar[dict[str, controls.Validator]] = {
        "token_ttl": controls.number,
        "redirect": controls.boolean,
    }

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        token_ttl: float = 3600,
        redirect: bool = False,
    ) -> None:
        super().__init__()
        self.users: dict[str, str] = dict(_DEFAULT_USERS if users is None else users)
        self.token_ttl = token_ttl
        self.redirect = redirect
        # The signing certificate MOEX's CA issued each Passport user (by user name).
        self.signers: dict[str, x509.Certificate] = {}
        # Every Passport token handed out (bounded), so tests can look for leaks.
        self.issued: deque[str] = deque(maxlen=MAX_EVENTS)
        self._tokens: dict[str, _Token] = {}
        self._next_prune = 0.0

        self._calls = 0
        self._granted = 0
        self._denied = 0

        self._app.router.add_get("/authenticate", self._authenticate_handler)
        self.add_action_route("/_sandbox/expire", "expired", self.expire_tokens)
        self.add_sandbox_routes()

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
        super().reset_stats()
        self._calls = 0
        self._granted = 0
        self._denied = 0

    def answer_failure(self, status: int) -> web.Response:
        # Plain text, like the rest of Passport's answers.
        return web.Response(status=status, text=controls.failure_text(status) + "\n")

    def answer_closed(self) -> web.Response:
        return web.Response(status=503, text="Server is shutting down\n")

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
        return await self.intercept() or self._authenticate(request)


class PassportDenied(Exception):
    """A MOEX Passport login refused; ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _plus_hint(value: str) -> str:
    """A hint when a form value has spaces: a "+" sent without URL-encoding."""
    return " (it has spaces: was a '+' sent without URL-encoding?)" if " " in value else ""


async def check_passport_login(
    passport: MoexPassport | None, ca_file: Path | None, form: Mapping[str, str]
) -> str:
    """The user of a MOEX two-factor login (docs/protocols.md): a live Passport token in
    ``certificate`` and an RSA detached CMS ``signature`` over its exact bytes, by the
    certificate registered for that user and issued by ``ca_file``. Raises PassportDenied.
    """
    for name in _LOGIN_FIELDS:
        if not form.get(name):
            raise PassportDenied(f"Missing parameter: {name}")
    algorithm = form["algorithm"]
    # Checked first: openssl here has no GOST support, so a GOST signature would only
    # fail later with a less helpful reason.
    if algorithm == "GOST":
        raise PassportDenied(_GOST_UNSUPPORTED)
    if algorithm != "RSA":
        raise PassportDenied("algorithm must be GOST or RSA")
    if passport is None or ca_file is None:
        raise PassportDenied("MOEX Passport login is not configured in this sandbox")

    token = form["certificate"]
    user = passport.token_valid(token)
    if user is None:
        raise PassportDenied("Unknown or expired MOEX Passport token" + _plus_hint(token))
    signature = form["signature"]
    if "\n" in signature or "\r" in signature:
        raise PassportDenied("signature must be base64 without line breaks")
    try:
        der = base64.b64decode(signature, validate=True)
    except ValueError:
        raise PassportDenied("signature is not valid base64" + _plus_hint(signature)) from None
    try:
        # Detached: the signature covers exactly the token's bytes, nothing added.
        verified = await verify_cms(der, ca_file=ca_file, detached_content=token.encode("ascii"))
    except CmsInvalid as exc:
        raise PassportDenied(f"signature does not verify: {exc.reason}") from None
    try:
        # openssl also accepts an attached signature when given the content; MOEX asks
        # for a detached one, so one that verifies on its own is refused.
        await verify_cms(der, ca_file=ca_file)
    except CmsInvalid:
        pass
    else:
        raise PassportDenied("signature must be detached (it carries the token inside)")
    registered = passport.signers.get(user)
    if registered is None:
        raise PassportDenied(f"no signing certificate is registered for {user}")
    der_cert = serialization.Encoding.DER
    if verified.signer.public_bytes(der_cert) != registered.public_bytes(der_cert):
        raise PassportDenied(f"the signer is not the certificate registered for {user}")
    if not isinstance(verified.signer.public_key(), rsa.RSAPublicKey):
        raise PassportDenied("algorithm RSA does not match the signer's key")
    return user
