"""``moex_passport``: MOEX Passport two-factor login (docs/protocols.md, "MOEX Passport").

1. ``GET passport_url`` with Basic auth → the Passport token in cookie ``MicexPassportCert``
   (from a 200, or a 302 that is not followed);
2. a DETACHED CMS signature over the exact token bytes, by the configured signer;
3. ``POST token_url`` with ``grant_type=password`` and ``grant_type_moex=passport``.

A Passport token is fetched fresh for each full login; renewal uses the refresh grant while
the refresh token lives. MOEX answers 403 for a bad client, secret or signature.
"""

from __future__ import annotations

import re
import ssl

from sidecar import logs
from sidecar.auth.base import AuthError, Failure, Grant
from sidecar.auth.http import idp_error
from sidecar.auth.oauth import OAuthFlow, TokenEndpoint, basic_authorization
from sidecar.config.auth import MoexPassportAuth
from sidecar.http1.dial import Dialer
from sidecar.http1.errors import TransportError
from sidecar.http1.fetch import Fetcher
from sidecar.http1.retry_after import parse_retry_after
from sidecar.signing import Signer, SigningError, b64

COOKIE = "MicexPassportCert"
# The Passport token is base64; RFC 6265 cookie-octets (printable ASCII but space, DQUOTE,
# comma, semicolon and backslash) is what a cookie may carry at all. It is signed byte for
# byte, so nothing outside that, and nothing huge, is handed to the signer.
MAX_PASSPORT_TOKEN = 16 * 1024
_COOKIE_OCTETS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")


class PassportClient:
    """The Passport call: Basic credentials in, the token from ``Set-Cookie`` out."""

    def __init__(self, url: str, username: str, password: str, ssl_context: ssl.SSLContext,
                 timeout: float, dialer: Dialer | None = None) -> None:
        self.url = url
        self._authorization = basic_authorization(username, password)
        self._http = Fetcher(ssl_context, timeout, dialer)

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        self._http.renew_tls(ssl_context)

    async def fetch(self) -> str:
        try:
            reply = await self._http.request(
                "GET", self.url, headers={"Authorization": self._authorization}
            )
            status, cookies = reply.status, reply.headers.getall("Set-Cookie", [])
            wait = parse_retry_after(reply.headers.get("Retry-After"))
        except TransportError as exc:
            raise idp_error("MOEX Passport", exc) from None
        if status in (401, 403):
            raise AuthError.answered(
                status, f"MOEX Passport answered {status}: login or password rejected"
            )
        if status not in (200, 301, 302, 303, 307, 308):
            # A 429 or 503 may say when to come back; the next attempt waits at least that long.
            raise AuthError.answered(status, f"MOEX Passport answered {status}", wait)
        token = passport_cookie(cookies)
        if not token:
            raise AuthError(f"MOEX Passport answered {status} without a {COOKIE} cookie")
        if len(token) > MAX_PASSPORT_TOKEN:
            raise AuthError(
                f"MOEX Passport {COOKIE} is longer than {MAX_PASSPORT_TOKEN} characters"
                f" ({len(token)})"
            )
        if _COOKIE_OCTETS.fullmatch(token) is None:
            raise AuthError(f"MOEX Passport {COOKIE} has characters a cookie cannot carry")
        logs.secrets.add(token, dynamic=True)
        return token

    async def close(self) -> None:
        await self._http.close()


def passport_cookie(set_cookie_headers: list[str]) -> str | None:
    """The raw ``MicexPassportCert`` value: exactly the bytes MOEX expects to be signed.

    As a browser would (RFC 6265), a later cookie of the same name replaces an earlier one;
    an empty value (a clearing cookie) is no token."""
    found = None
    for header in set_cookie_headers:
        name, sep, rest = header.partition("=")
        if sep and name.strip() == COOKIE:
            value = rest.split(";", 1)[0].strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found = value or found
    return found


class MoexPassportFlow(OAuthFlow):
    grant_type = "passport"

    def __init__(
        self,
        cfg: MoexPassportAuth,
        endpoint: TokenEndpoint,
        passport: PassportClient,
        signer: Signer,
    ) -> None:
        super().__init__(endpoint, cfg.client_id, cfg.client_secret.get_secret_value(), cfg.scope)
        self._passport = passport
        self._signer = signer
        self._algorithm = cfg.algorithm

    async def login(self) -> Grant:
        token = await self._passport.fetch()
        try:
            signature = b64(await self._signer.sign(token.encode("ascii")))
        except UnicodeEncodeError:
            raise AuthError("MOEX Passport token is not ASCII; cannot sign it") from None
        except SigningError as exc:
            raise AuthError(
                f"signing the Passport token failed: {exc.reason}", kind=Failure.LOCAL
            ) from None
        logs.secrets.add(signature, dynamic=True)
        form = {
            "grant_type": "password",
            "grant_type_moex": "passport",
            "certificate": token,
            "algorithm": self._algorithm,
            "signature": signature,
        }
        if self.scope:
            form["scope"] = self.scope
        try:
            return await self._post(form)
        except AuthError as exc:
            if exc.status == 403:  # MOEX's one answer for a bad client, secret or signature
                raise AuthError.answered(
                    403, f"MOEX SSO: credentials or signature rejected ({exc.reason})",
                    exc.retry_after,
                ) from None
            raise

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        super().renew_tls(ssl_context)
        self._passport.renew_tls(ssl_context)

    async def close(self) -> None:
        await super().close()
        await self._passport.close()
        await self._signer.close()
